"""The forgetting budget: is a checkpoint's general ability still within what the user will trade?

Two kinds of limit: general drift (mean KL to the base, a direct measurement with no sampling
noise worth the name at ~5k tokens) and general accuracy drops. An accuracy drop counts only when
the paired bootstrap interval of (tuned - base) lies entirely below zero *and* the point drop is
larger than the allowance: a suite of 40 items moves 2.5 points when one answer flips, and the
budget must not fire on noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..evaluate.config import BudgetConfig
from ..evaluate.stats import Score, compare

# General accuracy suites the budget watches (keys of general_suite_scores).
ACCURACY_SUITES = ("knowledge_mc", "math", "code")


@dataclass
class BudgetJudge:
    """Checks evaluations against the budget, relative to the base (step-0) scores."""

    budget: BudgetConfig
    base_scores: dict[str, Score] = field(default_factory=dict)

    def violations(self, metrics: dict[str, Any], scores: dict[str, Score]) -> list[str]:
        """Reasons this evaluation is outside the budget (empty list: inside)."""
        out = []
        b = self.budget
        kl = metrics.get("general/kl")
        if b.general_kl is not None and kl is not None and kl > b.general_kl:
            out.append(f"general KL {kl:.4f} > {b.general_kl}")
        if b.general_accuracy_drop is not None:
            for suite in ACCURACY_SUITES:
                if suite in scores and suite in self.base_scores:
                    c = compare(self.base_scores[suite], scores[suite])
                    drop_pp = -100.0 * c.delta
                    if c.verdict == "dropped" and drop_pp > b.general_accuracy_drop:
                        out.append(f"{suite} dropped {drop_pp:.1f} pp (95% CI of change [{100 * c.ci_low:.1f}, {100 * c.ci_high:.1f}]) > {b.general_accuracy_drop} pp")
        return out


class BudgetStopCallback(TrainerCallback):
    """Early stop after ``patience`` consecutive evaluations outside the budget."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.outside_in_a_row = 0
        self.stopped_at: int | None = None

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Rebuild the counter from the evaluations recorded before a resume point.

        The Trainer does not checkpoint this callback's state, so without this a resumed run would
        forget evaluations already outside the budget and stop ``patience`` evaluations late. The
        step-0 base evaluation is always inside. If the recorded run had already reached
        ``patience``, it stops at its next evaluation (one interval later than without the crash).
        """
        run = 0
        for h in sorted(history, key=lambda h: h["step"]):
            if h["step"] > 0 and "budget/inside" in h:
                run = 0 if bool(h["budget/inside"]) else run + 1
        self.outside_in_a_row = run

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: dict[str, Any] | None = None, **kw: Any) -> TrainerControl:
        inside = bool(metrics.get("budget/inside", 1.0)) if metrics else True
        self.outside_in_a_row = 0 if inside else self.outside_in_a_row + 1
        if self.outside_in_a_row >= self.patience:
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control
