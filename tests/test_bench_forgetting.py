"""bench/forgetting.py's bookkeeping: the LR sweep's points, and the table read back from arm records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest


def _args(lr_sweep: list[str] | None, seed: int = 0) -> argparse.Namespace:
    return argparse.Namespace(extra=["train.batch_size=4"], lr_sweep=lr_sweep, budget_kl=0.05, ours=[], name="", seed=seed, steps=110)


def test_the_lr_sweep_runs_all_its_points_or_the_ones_named(load_bench) -> None:
    bench = load_bench("forgetting")
    every = [label for label, _ in bench.planned_arms(["naive full FT"], _args([]))]
    assert every == ["naive full FT lr 1e-4", "naive full FT lr 2e-4", "naive full FT lr 4e-4"]
    (label, ov), (ours, ours_ov) = bench.planned_arms(["naive full FT", "forgetless default"], _args(["1e-4"], seed=2))
    assert label == "naive full FT lr 1e-4 seed 2" and ov[-2:] == ["train.lr=1e-4", "seed=2"]
    # The forgetless arm is the defaults and the budget whatever the sweep: no LR of its own.
    assert ours == "forgetless default seed 2" and ours_ov == ["budget.general_kl=0.05", "seed=2"]
    assert [label for label, _ in bench.planned_arms(["naive LoRA"], _args(None))] == ["naive LoRA"]
    with pytest.raises(SystemExit, match="none of 'naive LoRA'"):
        bench.planned_arms(["naive LoRA"], _args(["1e-4"]))


def test_arms_kept_as_records_alone_are_judged_on_their_means(load_bench, tmp_path: Path) -> None:
    bench = load_bench("forgetting")
    records = [
        ("naive full FT", 0, 0.20, 0.70),
        ("naive full FT seed 1", 1, 0.30, 0.74),
        ("naive full FT lr 1e-4", 0, 0.40, 1.00),
        ("forgetless default", 0, 0.20, 0.04),
        ("forgetless default seed 1", 1, 0.40, 0.06),
    ]
    for arm, seed, gain, kl in records:
        d = tmp_path / arm.replace(" ", "-")
        d.mkdir()
        (d / "arm.json").write_text(json.dumps({"arm": arm, "seed": seed, "gain domain/qa_recall": gain, "general/kl": kl}))
    rows = bench.read_arms(tmp_path)
    assert sorted(rows) == sorted(a for a, *_ in records)
    best, *lines = bench.goal_lines(rows, 0.05)
    # lr 1e-4's one seed (0.40) beats lr 5e-5's mean (0.25): the goal is judged against it.
    assert best.startswith("best full FT (naive full FT lr 1e-4) over 1 seed(s)") and "gain 0.400" in best
    # Mean 0.30 of 0.40 = 75%, at mean KL 0.05, 5% of full FT's 1.00.
    assert len(lines) == 1 and "seeds 0, 1" in lines[0] and "75% of the best" in lines[0] and "mean general KL 0.050" in lines[0] and "5% of full FT's" in lines[0]
    # No record measured doc-only recall: said so, not averaged as zeros.
    assert "doc-only facts not recorded (0 of 2 seeds recorded it)" in lines[0]
    bench.plot(rows, tmp_path / "pareto.png", 0.05)
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_doc_only_gain_is_a_share_of_full_fts_only_where_full_ft_learned_some(load_bench) -> None:
    bench = load_bench("forgetting")
    assert bench.doc_only_clause(0.10, 0.40) == "on doc-only facts 25% of full FT's gain"
    # Full FT learned none of them (verrand): the recipe's own gain, not a share of zero.
    assert bench.doc_only_clause(0.05, 0.0) == "on doc-only facts a gain of 0.050 where full FT gained none"
    assert bench.doc_only_clause(float("nan"), 0.40) == "doc-only facts not recorded"


def test_resume_keeps_finished_arms_and_continues_unfinished_ones(load_bench, tmp_path: Path) -> None:
    bench = load_bench("forgetting")
    fresh, crashed, done = tmp_path / "fresh", tmp_path / "crashed", tmp_path / "done"
    crashed.mkdir()
    (crashed / "metrics.jsonl").write_text('{"step": 0}\n')
    done.mkdir()
    (done / "metrics.jsonl").write_text('{"step": 0}\n')
    (done / "arm.json").write_text("{}")
    assert [bench.arm_action(d, True) for d in (fresh, crashed, done)] == ["start", "continue", "keep"]
    # Without --resume every arm named is run again from scratch, whatever its folder holds.
    assert [bench.arm_action(d, False) for d in (fresh, crashed, done)] == ["start", "start", "start"]
