"""Adapter-scale calibration (WiSE-FT for adapters) and exporting the chosen scale.

For LoRA, scaling the adapter output by s in [0, 1] is exactly interpolating the weights between
the base (s=0) and the tuned model (s=1). Domain gain usually saturates before drift does, so a
scale below 1 often keeps most of the gain at a fraction of the forgetting.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import set_peft_model_state_dict
from peft.helpers import rescale_adapter_scale
from safetensors.torch import load_file, save_file

from ..io import atomic_write_bytes


def load_adapter_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a checkpoint's adapter weights into the (PEFT) model in place."""
    state = load_file(str(checkpoint / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, state)


def sweep_scales(model: torch.nn.Module, scales: list[float], evaluate: Callable[[float], dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate the model with its adapter rescaled by each scale; returns one metrics dict per scale."""
    out = []
    for s in scales:
        with rescale_adapter_scale(model, s):
            m = evaluate(s)
        m["scale"] = s
        out.append(m)
    return out


def bake_scale(adapter_dir: Path, scale: float) -> None:
    """Multiply every lora_B weight by ``scale`` so the saved adapter *is* the scaled adapter.

    Exact for LoRA/rsLoRA (the update is s * B A). Serving engines then need no extra setting.
    """
    if scale == 1.0:
        return
    path = adapter_dir / "adapter_model.safetensors"
    state = load_file(str(path))
    scaled = {k: (v * scale if "lora_B" in k else v).contiguous() for k, v in state.items()}
    tmp = path.with_name(".scaled.safetensors")
    save_file(scaled, str(tmp), metadata={"format": "pt", "forgetless_adapter_scale": str(scale)})
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()
