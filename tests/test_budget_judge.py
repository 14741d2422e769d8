"""The one budget judge: limits, accuracy drops with their intervals, "no budget set" as its own state,
and the same verdict from every decision that calls it."""

from __future__ import annotations

import pytest

from forgetless.budget import BudgetConfig, Violation, judge
from forgetless.deploy.quantize import judge_int8
from forgetless.evaluate.stats import make_score
from forgetless.registry.lineage import judge_suites
from forgetless.train.budget import select


def test_kl_limit() -> None:
    b = BudgetConfig(general_kl=0.05)
    assert judge(b, {"general/kl": 0.04}).state == "inside"
    v = judge(b, {"general/kl": 0.06})
    assert v.state == "outside" and v.violations == (Violation("general_kl", "general/kl", 0.06, 0.05),)
    assert str(v.violations[0]) == "general KL 0.0600 > 0.05"


def test_no_budget_is_its_own_state() -> None:
    v = judge(BudgetConfig(), {"general/kl": 1.136})
    assert v.state == "unset" and not v.inside and v.allowed
    assert v.describe() == "no budget set (general KL 1.1360 nats/token)"
    assert v.as_metrics() == {"budget/state": "unset", "budget/outside": 0.0, "budget/violations": []}


def test_a_limit_never_measured_is_a_violation() -> None:
    v = judge(BudgetConfig(general_kl=0.05), {"domain/qa_recall": 0.3})
    assert v.state == "outside" and v.violations[0].kind == "not_measured"


def test_accuracy_drop_needs_the_interval() -> None:
    base = {"knowledge_mc": make_score([1.0] * 40)}
    b = BudgetConfig(general_accuracy_drop=1.0)
    # 10 of 40 answers flipped to wrong: a 25-point drop whose paired interval excludes zero.
    v = judge(b, {}, scores={"knowledge_mc": make_score([0.0] * 10 + [1.0] * 30)}, base_scores=base)
    assert len(v.violations) == 1 and str(v.violations[0]).startswith("knowledge_mc dropped 25.0 pp")
    # One answer of 40 flipped: 2.5 points down, but the interval reaches zero -> noise, inside.
    assert judge(b, {}, scores={"knowledge_mc": make_score([0.0] + [1.0] * 39)}, base_scores=base).state == "inside"
    # A real 25-point drop the user allows (30 pp) is inside.
    allowed = BudgetConfig(general_accuracy_drop=30.0)
    assert judge(allowed, {}, scores={"knowledge_mc": make_score([0.0] * 10 + [1.0] * 30)}, base_scores=base).state == "inside"


def test_recorded_accuracy_verdict_stands_and_kl_is_judged_again() -> None:
    """Read back from metrics.jsonl there are no per-item scores: the recorded accuracy verdict
    stands, while a KL limit set after the run still applies."""
    drop = Violation("accuracy_drop", "math", 12.5, 1.0, "(95% CI of change [-20.0, -5.0])")
    line = {"general/kl": 0.04, "budget/violations": [drop.as_dict()]}
    assert judge(BudgetConfig(general_accuracy_drop=1.0), line).violations == (drop,)
    assert judge(BudgetConfig(general_kl=0.03), line).violations == (Violation("general_kl", "general/kl", 0.04, 0.03),)


# Each row: a budget, the selected evaluation's metrics, and the one verdict every decision must reach.
AGREEMENT = [
    (BudgetConfig(general_kl=0.05), {"general/kl": 0.04}, "inside"),
    (BudgetConfig(general_kl=0.05), {"general/kl": 0.05}, "inside"),  # the limit itself is allowed
    (BudgetConfig(general_kl=0.05), {"general/kl": 0.0500001}, "outside"),
    (BudgetConfig(general_kl=0.05), {}, "outside"),  # not measured
    (BudgetConfig(), {"general/kl": 1.136}, "unset"),
    (BudgetConfig(general_accuracy_drop=2.0), {"general/kl": 0.3}, "inside"),
    (BudgetConfig(general_accuracy_drop=2.0), {"general/kl": 0.3, "budget/violations": [Violation("accuracy_drop", "math", 12.5, 2.0).as_dict()]}, "outside"),
]


@pytest.mark.parametrize(("budget", "metrics", "state"), AGREEMENT)
def test_registry_selection_and_quantize_gate_agree(budget: BudgetConfig, metrics: dict, state: str) -> None:
    assert judge(budget, metrics).state == state
    base = {"step": 0, "general/kl": 0.0, "domain/qa_recall": 0.1}
    tuned = {"step": 10, "domain/qa_recall": 0.5, **metrics}
    # Registry: the general verdict is the budget's state; only "inside" passes.
    reg = judge_suites(tuned, base, budget)
    assert reg.budget.state == state and reg.general_pass == (state == "inside") and reg.domain_pass
    # Selection: the checkpoint is kept unless the budget is broken.
    sel = select([base, tuned], budget)
    assert (sel.step == 10) == (state != "outside")
    assert ("inside the budget" in sel.verdict) == (state == "inside")
    assert ("no budget set" in sel.verdict) == (state == "unset")
    # Quantize gate with a tolerance that cannot fire: the run's budget alone decides.
    int8 = {"general/kl": metrics.get("general/kl", 0.0), "domain/qa_recall": 0.5, **metrics}
    if "general/kl" in metrics:  # the gate always measures KL itself
        passed, _, _ = judge_int8({"general/kl": 0.0, "domain/qa_recall": 0.5}, int8, budget=budget, max_kl_increase=10.0, max_domain_drop=0.02)
        assert passed == (state != "outside")
