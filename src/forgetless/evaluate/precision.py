"""Numeric precision of in-loop evaluation: fp32, or bf16 autocast where the hardware has bf16 matmuls.

Evaluation is forward passes only, and on a CPU with AMX (Sapphire Rapids and later) bf16 matmuls
run ~2-2.5x faster than fp32 (measured on SmolLM2-135M, 2 cores: 356 -> 726 tokens/s at batch 16
x 48). Weights stay fp32; autocast only runs the matmuls in bf16 with fp32 accumulation. The base
reference that KL is measured against is built under the same precision (it is part of the
reference's cache key), so a no-op adapter still scores KL exactly 0; docs/benchmarks.md gives
the measured effect on KL and the suite scores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has AMX tiles (bf16 matmuls in hardware); without them bf16 is no faster."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def resolve(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` on a CUDA GPU with bf16 or a CPU with AMX, else ``fp32``; others unchanged."""
    if precision != "auto":
        return precision
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the block under ``precision`` (already resolved: ``fp32`` or ``bf16``)."""
    if precision == "fp32":
        yield
        return
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r}")
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield


def _lora_linears(model: torch.nn.Module) -> dict[int, tuple[torch.nn.Module, list[str]]]:
    """``id(base_layer) -> (LoRA layer, its active adapters)`` for every PEFT LoRA ``Linear`` whose
    adapters can be merged into a copy of its weight: plain LoRA (no DoRA or other variant),
    adapters enabled, not merged."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # peft is a dependency; keep the module importable without it anyway
        return {}
    out: dict[int, tuple[torch.nn.Module, list[str]]] = {}
    for mod in model.modules():
        if not isinstance(mod, LoraLinear) or mod.disable_adapters or mod.merged:
            continue
        active = [a for a in mod.active_adapters if a in mod.lora_A]
        if not active or any(a in mod.lora_variant for a in active) or not isinstance(mod.base_layer, torch.nn.Linear):
            continue
        out[id(mod.base_layer)] = (mod, active)
    return out


@contextlib.contextmanager
def eval_weights(model: torch.nn.Module, precision: str) -> Iterator[None]:
    """For the duration, frozen ``nn.Linear`` weights are replaced by copies made once (CPU only):

    * a LoRA layer by its base ``nn.Linear`` holding ``W + scale * B @ A`` (merged), swapped into
      the LoRA layer's place in the module tree: each adapted matmul is then one matmul instead
      of three plus an add, with none of PEFT's per-call Python. Measured on the demo's suites
      (SmolLM2-135M, LoRA r16 on all linears, bf16, batch 64, 2 quiet cores): 33.7 s per
      evaluation on PEFT's adapter path, 25.9 s merged and swapped, 24.3 s for the same model
      with no adapter at all;
    * under bf16, every other frozen weight by its bf16 cast: autocast caches its casts only for
      weights that require grad, so a frozen weight would be cast again on every call, which
      dominates small forward passes such as decode steps. A copy holds the same bf16 values
      autocast would produce (round to nearest even).

    The merged copy rounds once (``W + BA`` in fp32, then bf16 under bf16) where the adapter path
    rounds each product; a no-op adapter (``B = 0``) gives exactly the base's weights, so it still
    scores KL 0. The current adapter scale (``rescale_adapter_scale``) is what gets merged. The
    originals are put back afterwards (tied weights included: only the Linear's reference is
    swapped, never the tensor). Extra memory while active: the adapted weights once more (in bf16
    under bf16), which is why it is limited to the CPU.
    """
    if next(model.parameters()).device.type != "cpu" or precision not in ("fp32", "bf16"):
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    lora = _lora_linears(model)
    parent_of = {id(child): (mod, name) for mod in model.modules() for name, child in mod._modules.items() if child is not None}
    saved: list[tuple[torch.nn.Module, torch.nn.Parameter]] = []
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    copies: dict[int, torch.nn.Parameter] = {}  # one copy per tensor (a tied weight is cast once)
    try:
        # The merge itself runs in fp32 even inside an autocast block (B @ A must not round twice).
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            for mod in list(model.modules()):
                w = mod._parameters.get("weight") if isinstance(mod, torch.nn.Linear) else None
                if w is None or w.requires_grad or w.dtype != torch.float32:
                    continue
                if id(mod) in lora:
                    layer, active = lora[id(mod)]
                    merged = w.detach().clone()
                    for a in active:
                        merged += layer.get_delta_weight(a).to(merged.dtype)
                    copy = torch.nn.Parameter(merged.to(dtype), requires_grad=False)
                    # The LoRA wrapper leaves the module tree for the duration: its parent calls
                    # the base Linear (holding the merged weight) directly.
                    parent, name = parent_of[id(layer)]
                    swapped.append((parent, name, layer))
                    parent._modules[name] = mod
                elif dtype == torch.bfloat16:
                    if id(w) not in copies:
                        copies[id(w)] = torch.nn.Parameter(w.detach().to(torch.bfloat16), requires_grad=False)
                    copy = copies[id(w)]
                else:
                    continue
                saved.append((mod, w))
                mod._parameters["weight"] = copy
        yield
    finally:
        for parent, name, layer in reversed(swapped):
            parent._modules[name] = layer
        for mod, w in saved:
            mod._parameters["weight"] = w


@contextlib.contextmanager
def evaluating(model: torch.nn.Module, precision: str) -> Iterator[None]:
    """Everything evaluation runs under: autocast at ``precision`` plus :func:`eval_weights`."""
    with autocast(precision, next(model.parameters()).device), eval_weights(model, precision):
        yield
