"""The forgetting budget during training: the verdict on every evaluation, the early stop, and the
choice of the result (checkpoint and adapter scale).

Every verdict here comes from :func:`forgetless.budget.judge`; this module only applies it. A
checkpoint outside the budget is never selected. If none is inside, the base model is the honest
answer, and the run says so. With no budget set, the best domain score wins and the verdict states
the drift it reached, never "inside the budget".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..budget import BudgetConfig, domain_score, judge, metric_value, primary_metric
from ..evaluate.runner import Evaluation
from ..evaluate.stats import Score


@dataclass
class BudgetJudge:
    """Judges each evaluation of a run against its budget, relative to the base's general scores."""

    budget: BudgetConfig
    base_scores: dict[str, Score] = field(default_factory=dict)

    def judged(self, ev: Evaluation) -> dict[str, Any]:
        """The evaluation's metrics line with the verdict added (``budget/state``, ``budget/outside``,
        ``budget/violations``)."""
        verdict = judge(self.budget, ev.metrics, scores=ev.scores, base_scores=self.base_scores)
        return {**ev.metrics, **verdict.as_metrics()}


def _outside(h: dict[str, Any]) -> bool:
    return bool(h.get("budget/outside", 0.0))


# An evaluation outside the budget does not count towards patience while something is bringing the
# drift back: its general KL fell by at least this share since the previous evaluation (the KL
# controller, the LR decay), or the KL controller raised its weight by at least this share since
# then (it is still steering towards the budget, not yet at its limit). On a new domain the
# defaults' drift went 0.090, 0.087, 0.057 against a 0.05 budget while recall rose 0.067, 0.100,
# 0.250, and a plain count of 3 stopped the run there, 40% short. On Gemma-3-270M the drift went
# 0.181, 0.354, 0.342 while the weight climbed 2.3, 10.5, 47: a stop at step 57 of 91 ended the
# run mid-correction (KL 0.206 at step 76 once the weight reached its ceiling, recall 0.25 -> 0.38).
# Nor does one whose drift is inside the KL controller's aim at that point of the run
# (``kl_control/aim``): early in a run the controller deliberately lets the drift run above the budget.
PROGRESS = 0.1


class BudgetStopCallback(TrainerCallback):
    """Early stop after ``patience`` consecutive evaluations outside the budget that are not coming
    back towards it: neither general KL down by ``progress`` or more since the previous evaluation,
    nor the KL controller's weight (``kl_control/weight``) up by ``progress`` or more, nor the
    drift inside the controller's aim at that point of the run (``kl_control/aim``)."""

    def __init__(self, patience: int, progress: float = PROGRESS) -> None:
        self.patience = patience
        self.progress = progress
        self.outside_in_a_row = 0
        self.last_kl: float | None = None
        self.last_weight: float | None = None
        self.stopped_at: int | None = None

    def _count(self, h: dict[str, Any]) -> None:
        kl, weight, aim = metric_value(h, "general/kl"), metric_value(h, "kl_control/weight"), metric_value(h, "kl_control/aim")
        coming_back = kl is not None and self.last_kl is not None and kl <= (1.0 - self.progress) * self.last_kl
        steering = weight is not None and self.last_weight is not None and weight >= (1.0 + self.progress) * self.last_weight
        allowed = kl is not None and aim is not None and kl <= aim  # the controller lets it run there at this point of the run
        if not _outside(h):
            self.outside_in_a_row = 0
        elif not (coming_back or steering or allowed):
            self.outside_in_a_row += 1
        self.last_kl = kl if kl is not None else self.last_kl
        self.last_weight = weight if weight is not None else self.last_weight

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Rebuild the counter from the evaluations recorded before a resume point.

        The Trainer does not checkpoint this callback's state, so without this a resumed run would
        forget evaluations already outside the budget and stop ``patience`` evaluations late. The
        step-0 base evaluation is always inside. If the recorded run had already reached
        ``patience``, it stops at its next evaluation (one interval later than without the crash).
        """
        self.outside_in_a_row, self.last_kl, self.last_weight = 0, None, None
        for h in sorted(history, key=lambda h: h["step"]):
            self._count(h)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: dict[str, Any] | None = None, **kw: Any) -> TrainerControl:
        self._count(metrics or {})
        if self.outside_in_a_row >= self.patience:
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


@dataclass
class Selection:
    """The chosen evaluation (step None: keep the base), at which adapter scale, and why."""

    step: int | None
    metric: str
    score: float | None
    verdict: str
    scale: float = 1.0
    metrics: dict[str, Any] | None = None  # the chosen evaluation's full metrics line

    def as_summary(self) -> dict[str, Any] | None:
        """What summary.json records as ``selected`` (None when the base is kept)."""
        if self.step is None:
            return None
        return {"step": self.step, "scale": self.scale, "metric": self.metric, "score": self.score, "metrics": self.metrics}


def select(history: list[dict[str, Any]], budget: BudgetConfig, scale_curve: list[dict[str, Any]] | None = None) -> Selection:
    """The best primary domain score among trained checkpoints (step > 0) and scaled points that the
    budget allows.

    Checkpoints tie-break towards the earlier step. A point of the adapter-scale sweep wins only
    when it scores strictly higher than the best checkpoint, ties between scales going to the one
    with the lower drift.
    """
    metric = primary_metric(history)
    trained = [h for h in history if h["step"] > 0]
    if not trained:
        return Selection(None, metric, None, "no checkpoint was trained")
    allowed = lambda h: judge(budget, h).allowed  # noqa: E731
    inside = [h for h in trained if allowed(h)]
    scaled = [c for c in scale_curve or [] if c.get("scale", 1.0) != 1.0 and allowed(c)]
    if not inside and not scaled:
        return Selection(None, metric, None, "no checkpoint stays inside the forgetting budget: the base model is kept")
    best = max(inside, key=lambda h: (domain_score(h, metric), -h["step"])) if inside else None
    best_scaled = max(scaled, key=lambda c: (domain_score(c, metric), -c.get("general/kl", 0.0))) if scaled else None
    if best_scaled is not None and (best is None or domain_score(best_scaled, metric) > domain_score(best, metric)):
        best, scale = best_scaled, float(best_scaled["scale"])
    else:
        scale = 1.0
    assert best is not None
    score = domain_score(best, metric)
    base = history[0] if history and history[0]["step"] == 0 else None
    gain = f"{metric} {domain_score(base, metric):.3f} -> {score:.3f}" if base else f"{metric} {score:.3f}"
    where = f"step {best['step']}" + (f" at adapter scale {scale}" if scale != 1.0 else "")
    if budget.is_set:
        verdict = f"{where} is the best checkpoint inside the budget ({gain})"
        if not inside:
            # The shrunken adapter is inside, the trained one is not: a reader of the first clause
            # alone would think training itself stayed inside the budget.
            verdict += f"; {_none_inside_at_full_scale(trained)}"
    else:
        verdict = f"{where} has the best domain score ({gain}); {judge(budget, best).describe()}"
    return Selection(best["step"], metric, score, verdict, scale, dict(best))


def _none_inside_at_full_scale(trained: list[dict[str, Any]]) -> str:
    """The clause saying that no checkpoint was inside the budget as trained, with the least drift."""
    kls = [(kl, h["step"]) for h in trained if (kl := metric_value(h, "general/kl")) is not None]
    if not kls:
        return "no checkpoint was inside it at full scale"
    kl, step = min(kls)
    return f"no checkpoint was inside it at full scale (least drift: general KL {kl:.4f} at step {step})"
