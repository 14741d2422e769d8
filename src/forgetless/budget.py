"""The forgetting budget: its settings and the one judge every decision calls.

A budget is how much general ability the user will trade for domain gain. Two kinds of limit:

* general drift: mean KL(base || tuned) in nats/token on the general prompts, a direct
  measurement with no sampling noise worth the name at ~5k tokens;
* general accuracy drops: a drop counts only when the paired bootstrap interval of
  (tuned - base) lies entirely below zero *and* the point drop is larger than the allowance: a
  suite of 40 items moves 2.5 points when one answer flips, and the budget must not fire on noise.

:func:`judge` is the only place a verdict is made: the in-loop early stop, checkpoint and scale
selection, the registry, every deploy gate and the reports all call it, so they cannot disagree.
"No budget set" is a state of its own (``unset``), never shown as "inside".

The same module names the primary domain score, the number checkpoints are ranked by inside the
budget: the registry and the deploy gates judge the domain side by the same metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from .evaluate.stats import Score

# General accuracy suites the budget watches (keys of the evaluator's per-item scores).
ACCURACY_SUITES = ("knowledge_mc", "math", "code")

# The first of these a run measured is its primary domain score (higher is better). Generative
# answer recall first: it is what a user of the tuned model sees, and it moved clearly on the
# sample domain where multiple choice moved least.
PRIMARY_DOMAIN = ("domain/qa_recall", "domain/qa_f1", "domain/mc_acc")

# Metric names whose value should go DOWN when the model gets better (everything else goes up).
_LOWER_IS_BETTER = ("ppl", "perplexity", "loss", "nll", "kl")

State = Literal["inside", "outside", "unset"]


class BudgetConfig(BaseModel):
    """How much general ability the user will trade for domain gain."""

    model_config = ConfigDict(extra="forbid")

    general_kl: float | None = Field(
        None, ge=0, description="Max mean KL(base || tuned) in nats/token on general prompts (None: no limit)."
    )
    general_accuracy_drop: float | None = Field(
        None, ge=0,
        description="Max drop, in percentage points, of any general accuracy suite (knowledge, math, code) against the base. A drop counts only when its 95% bootstrap interval excludes zero.",
    )  # fmt: skip

    @property
    def is_set(self) -> bool:
        """True when at least one limit is set."""
        return self.general_kl is not None or self.general_accuracy_drop is not None


@dataclass(frozen=True)
class Violation:
    """One limit broken (or not measured): what, on which suite, the value against the limit."""

    kind: Literal["general_kl", "accuracy_drop", "not_measured"]
    suite: str  # "general/kl", "knowledge_mc", ...
    value: float | None
    limit: float
    detail: str = ""  # e.g. the confidence interval of an accuracy change

    def __str__(self) -> str:
        if self.kind == "general_kl":
            return f"general KL {self.value:.4f} > {self.limit}"
        if self.kind == "accuracy_drop":
            return f"{self.suite} dropped {self.value:.1f} pp{' ' + self.detail if self.detail else ''} > {self.limit} pp"
        return f"{self.suite}: the budget limits it to {self.limit} but it was not measured"

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (one entry of ``budget/violations`` in a metrics line)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Violation:
        """Inverse of :meth:`as_dict`."""
        return cls(kind=d["kind"], suite=d["suite"], value=d.get("value"), limit=d["limit"], detail=d.get("detail", ""))


@dataclass(frozen=True)
class Verdict:
    """The budget's verdict on one evaluation."""

    state: State
    violations: tuple[Violation, ...] = field(default_factory=tuple)
    general_kl: float | None = None  # the drift measured, stated whatever the state

    @property
    def inside(self) -> bool:
        """True only when a budget is set and every limit holds."""
        return self.state == "inside"

    @property
    def allowed(self) -> bool:
        """True unless a set budget is broken (an unset budget allows everything)."""
        return self.state != "outside"

    def describe(self) -> str:
        """One line for people: which state, and the drift or the broken limits."""
        kl = f"general KL {self.general_kl:.4f} nats/token" if self.general_kl is not None else "general KL not measured"
        if self.state == "unset":
            return f"no budget set ({kl})"
        if self.state == "inside":
            return f"inside the budget ({kl})"
        return "outside the budget: " + "; ".join(str(v) for v in self.violations)

    def as_metrics(self) -> dict[str, Any]:
        """The keys a metrics line carries for this verdict."""
        return {
            "budget/state": self.state,
            "budget/outside": float(not self.allowed),
            "budget/violations": [v.as_dict() for v in self.violations],
        }


def _accuracy_violations(budget: BudgetConfig, scores: Mapping[str, Score], base_scores: Mapping[str, Score]) -> list[Violation]:
    from .evaluate.stats import compare  # paired bootstrap; numpy only, imported when a suite is judged

    out = []
    assert budget.general_accuracy_drop is not None
    for suite in ACCURACY_SUITES:
        if suite in scores and suite in base_scores:
            c = compare(base_scores[suite], scores[suite])
            drop_pp = -100.0 * c.delta
            if c.verdict == "dropped" and drop_pp > budget.general_accuracy_drop:
                ci = f"(95% CI of change [{100 * c.ci_low:.1f}, {100 * c.ci_high:.1f}])"
                out.append(Violation("accuracy_drop", suite, round(drop_pp, 4), budget.general_accuracy_drop, ci))
    return out


def _recorded(metrics: Mapping[str, Any]) -> list[Violation]:
    """Accuracy violations judged when the evaluation ran (they need per-item values)."""
    out = []
    for v in metrics.get("budget/violations") or []:
        if isinstance(v, Mapping) and v.get("kind") == "accuracy_drop":
            out.append(Violation.from_dict(v))
    return out


def metric_value(metrics: Mapping[str, Any], key: str) -> float | None:
    """The number a metrics line records under ``key``; None when it is absent or not a number."""
    v = metrics.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def judge(
    budget: BudgetConfig,
    metrics: Mapping[str, Any],
    *,
    scores: Mapping[str, Score] | None = None,
    base_scores: Mapping[str, Score] | None = None,
) -> Verdict:
    """The budget's verdict on one evaluation: the only function that decides it.

    ``metrics`` is a flat metrics line (``general/kl``, ...). Accuracy drops need per-item scores:
    pass ``scores`` and ``base_scores`` when the evaluation has just run; without them the
    accuracy verdicts recorded in the line (``budget/violations``) stand, while the KL limit is
    always judged again, so a budget changed after the run still applies. A limit whose suite was
    never measured is a violation: nothing proves it was kept.
    """
    kl = metric_value(metrics, "general/kl")
    if not budget.is_set:
        return Verdict("unset", (), kl)
    out: list[Violation] = []
    if budget.general_kl is not None:
        if kl is None:
            out.append(Violation("not_measured", "general/kl", None, budget.general_kl))
        elif kl > budget.general_kl:
            out.append(Violation("general_kl", "general/kl", kl, budget.general_kl))
    if budget.general_accuracy_drop is not None:
        if scores is not None and base_scores is not None:
            out += _accuracy_violations(budget, scores, base_scores)
        else:
            out += _recorded(metrics)
    return Verdict("outside" if out else "inside", tuple(out), kl)


# --- the domain side of the trade ---------------------------------------------------------------


def lower_is_better(metric: str) -> bool:
    """True for metrics such as perplexity or KL, where a smaller value is the better one."""
    leaf = metric.rsplit("/", 1)[-1].lower()
    return any(tag in leaf for tag in _LOWER_IS_BETTER)


def primary_metric(history: list[Mapping[str, Any]]) -> str:
    """The domain metric checkpoints are ranked by: the first of :data:`PRIMARY_DOMAIN` measured,
    else negated perplexity (``neg_ppl``)."""
    for m in PRIMARY_DOMAIN:
        if any(m in h for h in history):
            return m
    return "neg_ppl"


def domain_score(h: Mapping[str, Any], metric: str) -> float:
    """The primary domain score of one evaluation (higher is better)."""
    if metric == "neg_ppl":
        return -float(h.get("domain/ppl", float("inf")))
    return float(h.get(metric, float("-inf")))
