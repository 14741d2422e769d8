"""Adapter-scale calibration (WiSE-FT for adapters) and exporting the chosen scale.

For LoRA, scaling the adapter output by s in [0, 1] is exactly interpolating the weights between
the base (s=0) and the tuned model (s=1). Domain gain usually saturates before drift does, so a
scale below 1 often keeps most of the gain at a fraction of the forgetting.
"""

from __future__ import annotations

import math
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


# Aiming the adapter scale at the budget. Scaling a LoRA update by s scales the logit change by
# about s, and the KL of a small logit change grows like its square; measured curves grow a little
# slower (exponent ~1.6 on the sample domain), so the first guess assumes 1.5, which lands at or
# under the aim, and a second evaluation corrects the exponent from the two points measured.
FIRST_GUESS_EXPONENT = 1.5
MIN_SCALE = 0.05


def aimed_scale(kl_at_one: float, aim: float, *, kl_at_s: float | None = None, s: float | None = None) -> float:
    """The adapter scale whose general KL is predicted to be ``aim``, from KL(1) (and KL(s), if measured).

    Model: KL(s) = KL(1) * s**p. With one point, p is FIRST_GUESS_EXPONENT; with a second point
    (s, KL(s)), p is fitted through both. Clamped to [MIN_SCALE, 1].
    """
    if kl_at_one <= aim:
        return 1.0
    p = FIRST_GUESS_EXPONENT
    if kl_at_s is not None and s is not None and 0 < s < 1 and kl_at_s > 0:
        fitted = math.log(kl_at_s / kl_at_one) / math.log(s)
        if math.isfinite(fitted) and fitted > 0.5:  # a flat or inverted pair carries no exponent
            p = fitted
    return min(1.0, max(MIN_SCALE, (aim / kl_at_one) ** (1.0 / p)))


def calibrate_scale(
    cfg: RunConfig, model: torch.nn.Module, evaluator: Evaluator, judge: BudgetJudge, history: list[dict[str, Any]], console: Console
) -> list[dict[str, Any]]:
    """Adapter-scale calibration (LoRA only), each point judged by the budget.

    With a general-KL budget (``train.scale_search: budget``), the scale is aimed at the budget:
    checkpoints outside it whose domain score beats every checkpoint inside it are tried best
    first, each at the scale predicted to put its drift at ``train.scale_aim`` x the budget
    (one corrected retry if it lands outside), within ``len(train.scale_sweep)`` evaluations.
    Otherwise the fixed grid ``train.scale_sweep`` runs on the checkpoint with the best domain score.
    """
    trained = [h for h in history if h["step"] > 0]
    if not cfg.train.scale_sweep or not trained or not is_peft(model) or cfg.lora.use_dora:
        return []  # DoRA's magnitude vector makes output scaling non-linear in the weights: no sweep
    metric = primary_metric(history)
    budget_kl = cfg.budget.general_kl
    if cfg.train.scale_search == "budget" and budget_kl is not None:
        return _aim_at_budget(cfg, model, evaluator, judge, trained, metric, budget_kl, console)
    best = max(trained, key=lambda h: domain_score(h, metric))
    load_adapter_weights(model, cfg.run_dir / A.CHECKPOINTS_DIR / f"checkpoint-{best['step']}")
    console.print(f"  adapter scale: sweeping {cfg.train.scale_sweep} on step {best['step']}")

    def evaluate(scale: float) -> dict[str, Any]:
        with console.status(f"evaluating scale {scale}"):
            return judge.judged(evaluator.evaluate(model, step=best["step"]))

    curve = sweep_scales(model, [s for s in cfg.train.scale_sweep if s != 1.0], evaluate)
    return curve + [{**best, "scale": 1.0}]


def scale_candidates(trained: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Checkpoints worth scaling down: outside the budget, and scoring above every checkpoint inside
    it (a scaled-down adapter rarely scores above its own full-scale self), best score first, later
    step first on ties (it trained longer)."""
    inside = [domain_score(h, metric) for h in trained if not h.get("budget/outside", 0.0)]
    floor = max(inside, default=-math.inf)
    out = [h for h in trained if h.get("budget/outside", 0.0) and "general/kl" in h and domain_score(h, metric) > floor]
    return sorted(out, key=lambda h: (domain_score(h, metric), h["step"]), reverse=True)


def _aim_at_budget(
    cfg: RunConfig, model: torch.nn.Module, evaluator: Evaluator, judge: BudgetJudge, trained: list[dict[str, Any]],
    metric: str, budget_kl: float, console: Console,
) -> list[dict[str, Any]]:
    evaluations = len(cfg.train.scale_sweep)
    aim = cfg.train.scale_aim * budget_kl
    curve: list[dict[str, Any]] = []
    for ckpt in scale_candidates(trained, metric):
        if evaluations <= 0:
            break
        load_adapter_weights(model, cfg.run_dir / A.CHECKPOINTS_DIR / f"checkpoint-{ckpt['step']}")
        kl1 = float(ckpt["general/kl"])
        scale = round(aimed_scale(kl1, aim), 3)
        for attempt in range(2):
            if evaluations <= 0:
                break
            console.print(f"  adapter scale: step {ckpt['step']} (general KL {kl1:.4f} at scale 1) at scale {scale}, aimed at KL {aim:.4f}")
            with rescale_adapter_scale(model, scale), console.status(f"evaluating scale {scale}"):
                point = judge.judged(evaluator.evaluate(model, step=ckpt["step"]))
            evaluations -= 1
            point["scale"] = scale
            curve.append(point)
            if not point.get("budget/outside", 0.0) or attempt == 1:
                break
            retry = round(aimed_scale(kl1, aim, kl_at_s=float(point.get("general/kl", kl1)), s=scale), 3)
            # The fit can only move further down here; never retry the same scale.
            scale = min(retry, round(scale * 0.9, 3))
        curve.append({**ckpt, "scale": 1.0})
    return curve
