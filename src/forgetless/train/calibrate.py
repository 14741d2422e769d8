"""Adapter-scale calibration (WiSE-FT for adapters) and exporting the chosen scale.

For LoRA, scaling the adapter output by s in [0, 1] is exactly interpolating the weights between
the base (s=0) and the tuned model (s=1). Domain gain usually saturates before drift does, so a
scale below 1 often keeps most of the gain at a fraction of the forgetting.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import set_peft_model_state_dict
from peft.helpers import rescale_adapter_scale
from safetensors.torch import load_file, save_file

from .. import artifacts as A
from ..adapter import is_peft
from ..budget import domain_score, primary_metric
from ..io import atomic_write_bytes

if TYPE_CHECKING:
    from rich.console import Console

    from ..config import RunConfig
    from ..evaluate.runner import Evaluator
    from .budget import BudgetJudge


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


def calibrate_scale(
    cfg: RunConfig, model: torch.nn.Module, evaluator: Evaluator, judge: BudgetJudge, history: list[dict[str, Any]], console: Console
) -> list[dict[str, Any]]:
    """Sweep adapter scales on the checkpoint with the best domain score (LoRA only), each point judged by the budget."""
    trained = [h for h in history if h["step"] > 0]
    if not cfg.train.scale_sweep or not trained or not is_peft(model) or cfg.lora.use_dora:
        return []  # DoRA's magnitude vector makes output scaling non-linear in the weights: no sweep
    metric = primary_metric(history)
    best = max(trained, key=lambda h: domain_score(h, metric))
    load_adapter_weights(model, cfg.run_dir / A.CHECKPOINTS_DIR / f"checkpoint-{best['step']}")
    console.print(f"  adapter scale: sweeping {cfg.train.scale_sweep} on step {best['step']}")

    def evaluate(scale: float) -> dict[str, Any]:
        with console.status(f"evaluating scale {scale}"):
            return judge.judged(evaluator.evaluate(model, step=best["step"]))

    curve = sweep_scales(model, [s for s in cfg.train.scale_sweep if s != 1.0], evaluate)
    return curve + [{**best, "scale": 1.0}]
