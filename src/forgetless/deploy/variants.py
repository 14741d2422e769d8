"""Resolve a deploy target and load it as one of the servable variants.

Variants of one run:

* ``base``    the base model alone (the fallback that is always there);
* ``adapter`` base + PEFT adapter, unmerged (what training produced; one extra matmul per layer);
* ``merged``  the adapter folded into the weights (``merge_and_unload``): same outputs, base speed;
* ``int8``    ``merged`` with its ``nn.Linear`` layers quantized to int8 (weight-only by default);
* ``nf4``     4-bit NF4 base via bitsandbytes + adapter (QLoRA-style), CUDA only.

The int8 variant is rebuilt from the merged fp32 weights at load time (about a second for a 135M
model) rather than stored: torch's quantized modules hold packed C++ parameters that safetensors
cannot hold, and forgetless never writes pickles. What is stored is the quality-gate verdict
(``deploy/int8/quant_info.json``), keyed by the adapter's content hash.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import artifacts
from ..errors import ForgetlessError
from ..model_config import ModelConfig
from ..runfolder import is_run_folder, read_run_folder
from .int8_schemes import DEFAULT_INT8_SCHEME, INT8_SCHEMES

VARIANTS = ("base", "adapter", "merged", "int8", "nf4")
INT8_BACKENDS = ("torch", "torchao")


@dataclass(frozen=True)
class Target:
    """What to deploy: a base model (with the revision and remote-code setting it was trained
    with) and, for a run, its adapter."""

    model: ModelConfig
    run_dir: Path | None = None

    @property
    def base_model(self) -> str:
        """The base model's name, hub id or folder."""
        return self.model.name

    @property
    def dtype(self) -> str:
        """Weights dtype the run trained with."""
        return self.model.dtype

    def in_fp32(self) -> Target:
        """The same target loaded in float32 (what int8 and the quality gates start from)."""
        return replace(self, model=self.model.model_copy(update={"dtype": "float32"}))

    @property
    def adapter_dir(self) -> Path | None:
        """The run's final adapter folder (None for a bare model)."""
        return self.run_dir / artifacts.ADAPTER_DIR if self.run_dir is not None else None

    @property
    def label(self) -> str:
        """Short human name for tables."""
        return str(self.run_dir) if self.run_dir is not None else self.base_model

    def variants(self) -> tuple[str, ...]:
        """The variants this target has (a bare model has no adapter, so only base and int8 of it)."""
        return VARIANTS if self.run_dir is not None else ("base", "int8")


def resolve_target(target: str, *, db_path: Path | None = None, allow_remote_code: bool = False) -> Target:
    """``registry:ALIAS``, a run folder (has ``config.resolved.yaml``), or a model name / folder.

    A run folder's base is loaded exactly as it was trained (revision included); one trained with
    ``trust_remote_code`` needs ``allow_remote_code``.
    """
    if target.startswith("registry:"):
        from ..registry import resolve_alias

        return resolve_target(str(resolve_alias(target.split(":", 1)[1], db_path)), allow_remote_code=allow_remote_code)
    if is_run_folder(target):
        run = read_run_folder(target)
        run.require_adapter()
        return Target(run.model(allow_remote_code=allow_remote_code), run.path)
    return Target(ModelConfig(name=target, trust_remote_code=allow_remote_code))


def load_target_tokenizer(t: Target) -> PreTrainedTokenizerBase:
    """The run's tokenizer: the adapter folder's own (extended vocabulary) if it has one, else the base's."""
    from ..adapter import run_tokenizer

    return run_tokenizer(t.adapter_dir, t.model)


def quantize_int8(model: PreTrainedModel, backend: str = "torch", scheme: str = DEFAULT_INT8_SCHEME, *, inplace: bool = False) -> PreTrainedModel:
    """Quantize the ``nn.Linear`` layers of an fp32 model to int8 (``scheme``: see :mod:`.int8_schemes`).

    ``torch``: ``weight-only`` (fp32 activations) and ``weight-only-bf16`` (bf16 activations) swap in
    :class:`~.int8_weight_only.Int8WeightOnlyLinear`; the dynamic schemes use ``torch.ao.quantization.quantize_dynamic`` (fbgemm/onednn
    kernels, no extra package). Both return a copy unless ``inplace``. ``torchao``: ``Int8DynamicActivationInt8WeightConfig`` via
    ``torchao.quantization.quantize_`` (per-channel weights by construction), editing in place.
    ``scheme`` is one of :data:`INT8_SCHEMES`. ``inplace``: quantize ``model`` itself (torch backend),
    for a caller that has no use for the fp32 model after: a copy would hold a second fp32 model
    at the peak.
    """
    if scheme not in INT8_SCHEMES:
        raise ForgetlessError(f"unknown int8 scheme '{scheme}' (choose from {', '.join(INT8_SCHEMES)})")
    keep_head = scheme.endswith("fp32-head")
    if backend == "torch" and scheme in ("weight-only", "weight-only-bf16"):
        import copy

        from .int8_weight_only import quantize_weight_only

        act = torch.bfloat16 if scheme == "weight-only-bf16" else torch.float32
        return quantize_weight_only(model if inplace else copy.deepcopy(model), act)
    if backend == "torch":
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

        qconfig = default_dynamic_qconfig if scheme == "per-tensor" else per_channel_dynamic_qconfig
        spec: dict = {torch.nn.Linear: qconfig}
        if keep_head:
            # A module-name entry overrides the type entry: None leaves that Linear in fp32.
            spec["lm_head"] = None
        with warnings.catch_warnings():
            # torch marks eager-mode quantization deprecated in favour of torchao; it still ships
            # and is the one int8 path that needs no extra package.
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=inplace)
    if backend == "torchao":
        if importlib.util.find_spec("torchao") is None:
            raise ForgetlessError("the torchao int8 backend needs the torchao package: pip install torchao")
        if scheme in ("per-tensor", "weight-only", "weight-only-bf16"):
            raise ForgetlessError(f"the torchao int8 backend is wired for dynamic per-channel schemes only, not {scheme}")
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        def want(module: torch.nn.Module, fqn: str) -> bool:
            return isinstance(module, torch.nn.Linear) and not (keep_head and fqn == "lm_head")

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=want)
        return model
    raise ForgetlessError(f"unknown int8 backend '{backend}' (choose from {', '.join(INT8_BACKENDS)})")


def nf4_available() -> str | None:
    """None when 4-bit loading can run here, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "4-bit NF4 (bitsandbytes) needs a CUDA GPU; none is present"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "4-bit NF4 needs the bitsandbytes package: pip install bitsandbytes"
    return None


def load_base_4bit(name: str, *, trust_remote_code: bool = False, revision: str | None = None) -> PreTrainedModel:
    """Load a base model in 4-bit NF4 (double quantization, bf16 compute) for QLoRA training or serving.

    Raises :class:`ForgetlessError` on a machine without CUDA or bitsandbytes; bitsandbytes is
    imported only here, so forgetless stays importable without it.
    """
    if (why := nf4_available()) is not None:
        raise ForgetlessError(why)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ..models import resolve_model

    qcfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model(name),
        quantization_config=qcfg,
        dtype=torch.bfloat16,
        device_map={"": 0},
        trust_remote_code=trust_remote_code,
        revision=revision,
        use_safetensors=True,
    )
    model.eval()
    return model


def _attach_adapter(base: PreTrainedModel, t: Target, tok: PreTrainedTokenizerBase) -> PreTrainedModel:
    from ..adapter import attach_run_adapter

    assert t.adapter_dir is not None
    return attach_run_adapter(base, t.adapter_dir, tok)


def load_variant(
    t: Target,
    variant: str,
    *,
    device: str = "cpu",
    int8_backend: str = "torch",
    int8_scheme: str = DEFAULT_INT8_SCHEME,
    tok: PreTrainedTokenizerBase | None = None,
) -> PreTrainedModel:
    """Load ``variant`` of target ``t`` in eval mode on ``device`` (``int8`` is CPU only, ``nf4`` CUDA only)."""
    from ..models import load_model

    if variant not in t.variants():
        raise ForgetlessError(f"target {t.label} has no '{variant}' variant (it has: {', '.join(t.variants())})")
    tok = tok if tok is not None else load_target_tokenizer(t)
    if variant == "nf4":
        base = load_base_4bit(t.base_model, trust_remote_code=t.model.trust_remote_code, revision=t.model.revision)
        return _attach_adapter(base, t, tok)
    if variant == "int8" and device != "cpu":
        raise ForgetlessError("the int8 variant uses CPU kernels; bench it with --device cpu")
    # int8 always starts from fp32 weights: quantizing bf16 would stack two roundings.
    dtype = "float32" if variant == "int8" else t.dtype
    model = load_model(t.base_model, dtype=dtype, trust_remote_code=t.model.trust_remote_code, revision=t.model.revision)
    if variant != "base" and t.run_dir is not None:
        model = _attach_adapter(model, t, tok)
        if variant in ("merged", "int8"):
            model = model.merge_and_unload()
    if variant == "int8":
        model = quantize_int8(model, int8_backend, int8_scheme, inplace=True)  # the fp32 model is ours alone
    if device != "cpu":
        model.to(device)
    model.eval()
    return model
