"""The budget during training: early stop and checkpoint/scale selection on scripted metric sequences."""

from __future__ import annotations

from transformers import TrainerControl, TrainerState, TrainingArguments

from forgetless.budget import BudgetConfig, Violation
from forgetless.train.budget import BudgetStopCallback, select


def _outside(flags: list[bool]) -> list[dict[str, float]]:
    return [{"budget/outside": float(f)} for f in flags]


def _stop_step(lines: list[dict[str, float]], patience: int = 3) -> int | None:
    cb = BudgetStopCallback(patience)
    state, control = TrainerState(), TrainerControl()
    args = TrainingArguments(output_dir="/tmp/unused", report_to="none")
    for step, metrics in enumerate(lines, start=1):
        state.global_step = step
        control = cb.on_evaluate(args, state, control, metrics=metrics)
        if control.should_training_stop:
            return step
    return None


def test_early_stop_after_patience_consecutive() -> None:
    assert _stop_step(_outside([False, True, False, True, True, False]), patience=2) == 5
    assert _stop_step(_outside([True, False, True, False, True]), patience=2) is None
    assert _stop_step(_outside([False, True]), patience=1) == 2


def test_drift_coming_back_does_not_count_towards_patience() -> None:
    """The quillmark sequence against a 0.05 budget: 0.090, 0.087, 0.057. The third is outside but
    34% below the second (>= 10%): it does not count, so patience 3 does not stop the run."""
    def run(kls: list[float]) -> int | None:
        return _stop_step([{"budget/outside": float(kl > 0.05), "general/kl": kl} for kl in kls])

    assert run([0.090, 0.087, 0.057]) is None
    assert run([0.090, 0.087, 0.080]) == 3  # 0.080 is 8% below 0.087: no progress, it counts
    assert run([0.090, 0.087, 0.057, 0.055]) == 4  # 0.055 is 3.5% below 0.057: the third count
    assert run([0.090, 0.087, 0.057, 0.04, 0.09, 0.085]) is None  # inside at 0.04 resets the run


def test_a_weight_still_climbing_does_not_count_towards_patience() -> None:
    """The Gemma-3-270M sequence against a 0.05 budget: KL 0.181, 0.354, 0.342, 0.206, 0.200 with
    the controller's weight 2.3, 10.5, 47, 100 (its ceiling), 100. The first counts (no previous
    weight), the next three do not (weight up 4.5x, 4.5x, 2.1x; the fourth is also KL down 40%),
    the fifth counts (weight flat, KL down 3%): 2 of patience 3, no stop. Without the weight rule
    the run stopped at the third evaluation."""
    line = lambda kl, w: {"budget/outside": float(kl > 0.05), "general/kl": kl, "kl_control/weight": w}  # noqa: E731
    gemma = [line(0.181, 2.345), line(0.354, 10.509), line(0.342, 47.099), line(0.206, 100.0), line(0.200, 100.0)]
    assert _stop_step(gemma) is None
    assert _stop_step([{k: v for k, v in h.items() if k != "kl_control/weight"} for h in gemma]) == 3
    # A rise under 10% is not steering: 50 -> 54 (8%) counts, and with KL flat the run stops.
    assert _stop_step([line(0.2, 40.0), line(0.2, 50.0), line(0.2, 54.0), line(0.2, 54.0)]) == 4
    # The weight rule survives a resume: restore() rebuilds the last weight from the history.
    cb = BudgetStopCallback(3)
    cb.restore([{"step": 0, "budget/outside": 0.0, "general/kl": 0.0}] + [{"step": 19 * i, **h} for i, h in enumerate(gemma[:3], start=1)])
    assert (cb.outside_in_a_row, cb.last_weight) == (1, 47.099)


def test_drift_inside_the_controllers_aim_does_not_count_towards_patience() -> None:
    """Early in a run the controller aims above the budget (``kl_control/aim``): a drift it lets run
    there is not a drift out of control. Budget 0.05, aim 0.16, 0.11, 0.07, 0.04 over the run: the
    drift 0.10, 0.10, 0.10, 0.10 is outside the budget every time but counts only from the third
    evaluation (above its aim), so patience 2 stops at the fourth, not the second."""
    line = lambda kl, aim: {"budget/outside": float(kl > 0.05), "general/kl": kl, "kl_control/aim": aim}  # noqa: E731
    assert _stop_step([line(0.10, 0.16), line(0.10, 0.11), line(0.10, 0.07), line(0.10, 0.04)], patience=2) == 4
    assert _stop_step([{k: v for k, v in line(0.10, a).items() if k != "kl_control/aim"} for a in (0.16, 0.11, 0.07, 0.04)], patience=2) == 2
    # Exactly at the aim is still inside it.
    assert _stop_step([line(0.10, 0.10), line(0.10, 0.10)], patience=1) is None


HISTORY = [
    {"step": 0, "general/kl": 0.0, "domain/qa_recall": 0.10},
    {"step": 10, "general/kl": 0.03, "domain/qa_recall": 0.40},
    {"step": 20, "general/kl": 0.08, "domain/qa_recall": 0.70},
    {"step": 30, "general/kl": 0.04, "domain/qa_recall": 0.55},
]


def test_best_inside_budget_wins() -> None:
    sel = select(HISTORY, BudgetConfig(general_kl=0.05))
    assert (sel.step, sel.scale, sel.metric, sel.score) == (30, 1.0, "domain/qa_recall", 0.55)
    assert sel.verdict == "step 30 is the best checkpoint inside the budget (domain/qa_recall 0.100 -> 0.550)"
    assert sel.metrics == HISTORY[3]


def test_no_budget_states_the_drift_instead() -> None:
    sel = select(HISTORY, BudgetConfig())
    assert sel.step == 20
    assert sel.verdict == "step 20 has the best domain score (domain/qa_recall 0.100 -> 0.700); no budget set (general KL 0.0800 nats/token)"


def test_none_inside_keeps_the_base() -> None:
    sel = select(HISTORY, BudgetConfig(general_kl=0.01))
    assert sel.step is None and "base model is kept" in sel.verdict and sel.as_summary() is None


def test_stored_accuracy_violation_is_honoured() -> None:
    drop = Violation("accuracy_drop", "math", 12.5, 1.0).as_dict()
    hist = [HISTORY[0], {**HISTORY[3], "budget/violations": [drop]}, HISTORY[1]]
    assert select(hist, BudgetConfig(general_accuracy_drop=1.0)).step == 10


def test_a_scaled_point_wins_only_when_strictly_better() -> None:
    budget = BudgetConfig(general_kl=0.05)
    curve = [
        {"step": 20, "scale": 0.5, "general/kl": 0.03, "domain/qa_recall": 0.60},
        {"step": 20, "scale": 0.75, "general/kl": 0.06, "domain/qa_recall": 0.66},  # outside
        {**HISTORY[2], "scale": 1.0},  # the checkpoint itself, outside
    ]
    sel = select(HISTORY, budget, curve)
    assert (sel.step, sel.scale, sel.score) == (20, 0.5, 0.60)
    assert sel.verdict == "step 20 at adapter scale 0.5 is the best checkpoint inside the budget (domain/qa_recall 0.100 -> 0.600)"
    assert sel.metrics == curve[0]
    # A scaled point that only ties the best checkpoint does not displace it.
    tie = [{"step": 20, "scale": 0.5, "general/kl": 0.01, "domain/qa_recall": 0.55}]
    assert (select(HISTORY, budget, tie).step, select(HISTORY, budget, tie).scale) == (30, 1.0)


def test_a_scaled_point_chosen_because_nothing_was_inside_says_so() -> None:
    # Every checkpoint as trained drifts past 0.05; only the adapter shrunk to 0.5 is inside.
    hist = [HISTORY[0], {"step": 10, "general/kl": 0.09, "domain/qa_recall": 0.40}, {"step": 20, "general/kl": 0.07, "domain/qa_recall": 0.70}]
    curve = [{"step": 20, "scale": 0.5, "general/kl": 0.03, "domain/qa_recall": 0.60}]
    sel = select(hist, BudgetConfig(general_kl=0.05), curve)
    assert (sel.step, sel.scale) == (20, 0.5)
    assert sel.verdict == (
        "step 20 at adapter scale 0.5 is the best checkpoint inside the budget (domain/qa_recall 0.100 -> 0.600); "
        "no checkpoint was inside it at full scale (least drift: general KL 0.0700 at step 20)"
    )


def test_stopper_counter_survives_a_resume() -> None:
    """Outside, outside | crash and resume | outside: with patience 3 the run stops at the first
    evaluation after the resume, as it would have without the crash."""
    recorded = [
        {"step": 0, "budget/outside": 0.0},
        {"step": 10, "budget/outside": 0.0},
        {"step": 20, "budget/outside": 1.0},
        {"step": 30, "budget/outside": 1.0},
    ]
    cb = BudgetStopCallback(3)
    cb.restore(recorded)
    assert cb.outside_in_a_row == 2
    state, control = TrainerState(global_step=40), TrainerControl()
    args = TrainingArguments(output_dir="/tmp/unused", report_to="none")
    control = cb.on_evaluate(args, state, control, metrics={"budget/outside": 1.0})
    assert control.should_training_stop and cb.stopped_at == 40
    # An inside evaluation resets the run; order in the file does not matter.
    cb.restore([recorded[3], {"step": 35, "budget/outside": 0.0}, recorded[2]])
    assert cb.outside_in_a_row == 0
