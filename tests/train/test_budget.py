"""The forgetting budget, early stop and checkpoint selection on scripted metric sequences."""

from __future__ import annotations

from transformers import TrainerControl, TrainerState, TrainingArguments

from forgetless.evaluate.config import BudgetConfig
from forgetless.evaluate.stats import make_score
from forgetless.train.budget import BudgetJudge, BudgetStopCallback
from forgetless.train.select import select_checkpoint


def test_kl_limit() -> None:
    judge = BudgetJudge(BudgetConfig(general_kl=0.05))
    assert judge.violations({"general/kl": 0.04}, {}) == []
    assert judge.violations({"general/kl": 0.06}, {}) == ["general KL 0.0600 > 0.05"]


def test_accuracy_drop_needs_the_interval() -> None:
    base = {"knowledge_mc": make_score([1.0] * 40)}
    judge = BudgetJudge(BudgetConfig(general_accuracy_drop=1.0), base_scores=base)
    # 10 of 40 answers flipped to wrong: a 25-point drop whose paired interval excludes zero.
    clear = {"knowledge_mc": make_score([0.0] * 10 + [1.0] * 30)}
    v = judge.violations({}, clear)
    assert len(v) == 1 and v[0].startswith("knowledge_mc dropped 25.0 pp")
    # One answer of 40 flipped: 2.5 points down, but the interval reaches zero -> noise, inside.
    assert judge.violations({}, {"knowledge_mc": make_score([0.0] + [1.0] * 39)}) == []


def test_allowance_is_respected() -> None:
    base = {"math": make_score([1.0] * 40)}
    judge = BudgetJudge(BudgetConfig(general_accuracy_drop=30.0), base_scores=base)
    # A real 25-point drop, but the user allows 30.
    assert judge.violations({}, {"math": make_score([0.0] * 10 + [1.0] * 30)}) == []


def _run_stopper(inside: list[bool], patience: int) -> int | None:
    cb = BudgetStopCallback(patience)
    state, control = TrainerState(), TrainerControl()
    args = TrainingArguments(output_dir="/tmp/unused", report_to="none")
    for step, ok in enumerate(inside, start=1):
        state.global_step = step
        control = cb.on_evaluate(args, state, control, metrics={"budget/inside": float(ok)})
        if control.should_training_stop:
            return step
    return None


def test_early_stop_after_patience_consecutive() -> None:
    assert _run_stopper([True, False, True, False, False, True], patience=2) == 5
    assert _run_stopper([False, True, False, True, False], patience=2) is None
    assert _run_stopper([True, False], patience=1) == 2


HISTORY = [
    {"step": 0, "general/kl": 0.0, "domain/qa_recall": 0.10},
    {"step": 10, "general/kl": 0.03, "domain/qa_recall": 0.40},
    {"step": 20, "general/kl": 0.08, "domain/qa_recall": 0.70},
    {"step": 30, "general/kl": 0.04, "domain/qa_recall": 0.55},
]


def test_best_inside_budget_wins() -> None:
    sel = select_checkpoint(HISTORY, BudgetConfig(general_kl=0.05))
    assert (sel.step, sel.metric, sel.score) == (30, "domain/qa_recall", 0.55)
    # No budget: the best domain score overall.
    assert select_checkpoint(HISTORY, BudgetConfig()).step == 20


def test_none_inside_keeps_the_base() -> None:
    sel = select_checkpoint(HISTORY, BudgetConfig(general_kl=0.01))
    assert sel.step is None and "base model is kept" in sel.verdict


def test_stored_accuracy_violation_is_honoured() -> None:
    hist = [HISTORY[0], {**HISTORY[3], "budget/violations": ["math dropped 12.5 pp (...)"]}, HISTORY[1]]
    assert select_checkpoint(hist, BudgetConfig(general_accuracy_drop=1.0)).step == 10


def test_stopper_counter_survives_a_resume() -> None:
    """Outside, outside | crash and resume | outside: with patience 3 the run stops at the first
    evaluation after the resume, as it would have without the crash."""
    recorded = [
        {"step": 0, "budget/inside": 1.0},
        {"step": 10, "budget/inside": 1.0},
        {"step": 20, "budget/inside": 0.0},
        {"step": 30, "budget/inside": 0.0},
    ]
    cb = BudgetStopCallback(3)
    cb.restore(recorded)
    assert cb.outside_in_a_row == 2
    state, control = TrainerState(global_step=40), TrainerControl()
    args = TrainingArguments(output_dir="/tmp/unused", report_to="none")
    control = cb.on_evaluate(args, state, control, metrics={"budget/inside": 0.0})
    assert control.should_training_stop and cb.stopped_at == 40
    # An inside evaluation resets the run; order in the file does not matter.
    cb.restore([recorded[3], {"step": 35, "budget/inside": 1.0}, recorded[2]])
    assert cb.outside_in_a_row == 0
