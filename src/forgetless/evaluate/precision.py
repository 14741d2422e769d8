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


@contextlib.contextmanager
def cast_frozen_linears(model: torch.nn.Module, precision: str) -> Iterator[None]:
    """For the duration, every frozen ``nn.Linear`` weight is replaced by a bf16 copy (CPU + bf16 only).

    autocast caches its bf16 casts only for weights that require grad; a frozen base weight is
    cast again on every call, which dominates small forward passes such as decode steps. A copy
    made once holds the same bf16 values autocast would produce (round to nearest even), so the
    results are unchanged. The originals are put back afterwards (tied weights included: only the
    Linear's reference is swapped, never the tensor). Costs half the frozen weights' fp32 size in
    extra memory while active, which is why it is limited to the CPU.
    """
    if precision != "bf16" or next(model.parameters()).device.type != "cpu":
        yield
        return
    saved: list[tuple[torch.nn.Module, torch.nn.Parameter]] = []
    copies: dict[int, torch.nn.Parameter] = {}  # one copy per tensor (a tied weight is cast once)
    try:
        for mod in model.modules():
            w = mod._parameters.get("weight") if isinstance(mod, torch.nn.Linear) else None
            if w is None or w.requires_grad or w.dtype != torch.float32:
                continue
            if id(w) not in copies:
                copies[id(w)] = torch.nn.Parameter(w.detach().to(torch.bfloat16), requires_grad=False)
            saved.append((mod, w))
            mod._parameters["weight"] = copies[id(w)]
        yield
    finally:
        for mod, w in saved:
            mod._parameters["weight"] = w


@contextlib.contextmanager
def evaluating(model: torch.nn.Module, precision: str) -> Iterator[None]:
    """Everything evaluation runs under: autocast at ``precision`` plus :func:`cast_frozen_linears`."""
    with autocast(precision, next(model.parameters()).device), cast_frozen_linears(model, precision):
        yield
