"""What a registry alias points at, and loading a merged deployment variant (int8, GGUF) to serve.

A run or a distilled student is served as base + adapter: the router and the drift monitor use
the adapter as a switch (adapter off = the base, in the same weights). An ``int8`` or ``gguf-<type>``
version is served as what was promoted, one merged model built exactly as its quality gate
scored it:

* ``int8``: the run's fp32 merged model quantized with the backend and scheme recorded in its
  gate verdict (``deploy/int8/quant_info.json``, the version's artifact). The int8 weights are
  rebuilt at load time (torch's quantized modules cannot be stored as safetensors), so both the
  verdict file and the adapter must still hash to what the registry recorded.
* ``gguf-<type>``: the GGUF file (the version's artifact), read by transformers with the tokenizer
  and chat template it carries; it must hash to what the registry recorded.

A merged variant has no adapter to switch off: it is served without router, base route or drift
monitor (see docs/serving.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import artifacts
from ..errors import ForgetlessError
from ..hashing import sha256_file
from ..runfolder import RunFolder

ADAPTER = "adapter"  # the served variant of a run or distilled student: base + adapter


@dataclass(frozen=True)
class Pin:
    """A registry version to serve: its run folder and the content hashes it was registered with."""

    run_dir: Path
    adapter_sha256: str
    kind: str = "run"  # the registry's kind: run, distill, int8, gguf-<type>
    artifact: Path | None = None
    artifact_sha256: str | None = None
    ref: str | None = None  # name:version, for logs

    @property
    def variant(self) -> str:
        """What is served: ``adapter``, ``int8`` or ``gguf-<type>``."""
        return served_variant(self.kind)


def served_variant(kind: str) -> str:
    """The served variant of a registry kind; raises for a kind this server cannot load."""
    if kind in ("run", "distill"):
        return ADAPTER
    if kind == "int8" or kind.startswith("gguf-"):
        return kind
    raise ForgetlessError(f"cannot serve a registry version of kind '{kind}' (servable: run, distill, int8, gguf-<type>)")


def check_artifact(variant: str, artifact: Path | None, sha256: str | None) -> Path:
    """The variant's artifact, after checking it is there and unchanged since registration.

    Raises :class:`ForgetlessError` naming the file: a missing or changed artifact is never
    replaced by something else (the fp32 adapter, an older file).
    """
    if artifact is None:
        raise ForgetlessError(f"refusing to serve the {variant} variant: the registry recorded no artifact file for it")
    if not artifact.is_file():
        raise ForgetlessError(f"refusing to serve the {variant} variant: {artifact} is missing")
    if sha256 is not None and sha256_file(artifact) != sha256:
        raise ForgetlessError(f"refusing to serve the {variant} variant: {artifact} changed since it was registered (content hash differs)")
    return artifact


def int8_recipe(run: RunFolder, artifact: Path) -> tuple[str, str]:
    """``(backend, scheme)`` the int8 gate quantized with, from its verdict file."""
    try:
        rel = artifact.relative_to(run.path).as_posix()
    except ValueError:
        rel = None
    expected = f"{artifacts.DEPLOY_DIR}/{artifacts.QUANT_DIR}/{artifacts.QUANT_INFO}"
    if rel != expected:
        raise ForgetlessError(f"refusing to serve the int8 variant: its artifact {artifact} is not {run.path / expected}")
    info = run.read_json(rel)
    if not isinstance(info, dict):
        raise ForgetlessError(f"refusing to serve the int8 variant: {artifact} is not a JSON object")
    backend, scheme = info.get("backend"), info.get("scheme")
    # No guess: quantizing with another scheme than the gate scored would serve an ungated model.
    if not isinstance(backend, str) or not isinstance(scheme, str):
        raise ForgetlessError(f"refusing to serve the int8 variant: {artifact} records no int8 backend and scheme; run `forgetless quantize` again")
    return backend, scheme


def load_merged(run: RunFolder, variant: str, artifact: Path, *, allow_remote_code: bool = False) -> tuple[Any, Any, str]:
    """Load a merged variant of ``run`` in eval mode on CPU: ``(model, tokenizer, description)``.

    The artifact must have been checked (:func:`check_artifact`) by the caller.
    """
    # deploy builds and gates these variants; loading them through the same functions serves
    # exactly what was scored.
    if variant == "int8":
        from ..deploy.variants import Target, load_target_tokenizer, load_variant

        backend, scheme = int8_recipe(run, artifact)
        t = Target(run.model(allow_remote_code=allow_remote_code), run.path)
        tok = load_target_tokenizer(t)
        model = load_variant(t.in_fp32(), "int8", int8_backend=backend, int8_scheme=scheme, tok=tok)
        return model, tok, f"int8 ({backend}, {scheme})"
    if variant.startswith("gguf-"):
        from ..deploy.gguf_export import load_gguf

        model, tok = load_gguf(artifact)
        return model, tok, f"{variant} ({artifact.name}, dequantized to fp32 by transformers)"
    raise ForgetlessError(f"'{variant}' is not a merged variant")
