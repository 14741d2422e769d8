"""Choosing the result: the best checkpoint inside the forgetting budget.

A checkpoint is *inside the budget* when its general drift is within every configured limit.
Among those, the best one by the primary domain score wins. If none is inside, the base model is
the honest answer, and the run says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..evaluate.config import BudgetConfig

# The first of these a run measured is its primary domain score (higher is better). Generative
# answer recall first: it is what a user of the tuned model sees, and it moved clearly on the
# sample domain (0 -> 0.68) where multiple choice moved least.
PRIMARY_DOMAIN = ("domain/qa_recall", "domain/qa_f1", "domain/mc_acc")


def primary_metric(history: list[dict[str, Any]]) -> str:
    """The domain metric checkpoints are ranked by."""
    for m in PRIMARY_DOMAIN:
        if any(m in h for h in history):
            return m
    return "neg_ppl"


def domain_score(h: dict[str, Any], metric: str) -> float:
    """The primary domain score of one evaluation (negated perplexity when no accuracy is measured)."""
    if metric == "neg_ppl":
        return -float(h.get("domain/ppl", float("inf")))
    return float(h.get(metric, float("-inf")))


def budget_violations(h: dict[str, Any], budget: BudgetConfig) -> list[str]:
    """Reasons an evaluation breaks the budget (empty: inside).

    Accuracy verdicts need per-item values, so they are judged when the evaluation runs and
    stored in its metrics line (``budget/violations``); the KL limit is re-checked here so a
    budget changed after the run still applies.
    """
    out = [v for v in h.get("budget/violations", []) if not v.startswith("general KL")]
    if budget.general_kl is not None and h.get("general/kl", 0.0) > budget.general_kl:
        out.insert(0, f"general KL {h['general/kl']:.4f} > {budget.general_kl}")
    return out


@dataclass
class Selection:
    """The chosen evaluation (None: keep the base) and why."""

    step: int | None
    metric: str
    score: float | None
    verdict: str


def select_checkpoint(history: list[dict[str, Any]], budget: BudgetConfig) -> Selection:
    """Best primary domain score among trained checkpoints (step > 0) inside the budget."""
    metric = primary_metric(history)
    trained = [h for h in history if h["step"] > 0]
    inside = [h for h in trained if not budget_violations(h, budget)]
    if not trained:
        return Selection(None, metric, None, "no checkpoint was trained")
    if not inside:
        return Selection(None, metric, None, "no checkpoint stays inside the forgetting budget: the base model is kept")
    best = max(inside, key=lambda h: (domain_score(h, metric), -h["step"]))
    base = history[0] if history and history[0]["step"] == 0 else None
    gain = f" ({metric} {domain_score(base, metric):.3f} -> {domain_score(best, metric):.3f})" if base else ""
    return Selection(best["step"], metric, domain_score(best, metric), f"step {best['step']} is the best checkpoint inside the budget{gain}")
