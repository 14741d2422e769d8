"""The loop scores a fixed domain subset; the selected checkpoint is scored once on the full sets
and on the held-out general prompts."""

from __future__ import annotations

import json
from pathlib import Path

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.pipeline import run_pipeline


def test_loop_scores_the_subset_and_the_selected_checkpoint_the_full_sets(tiny_run: Path) -> None:
    cfg = load_config(tiny_run / "cfg.yaml", ["eval.domain_limit=1", "train.max_steps=4", "train.eval_every=2", "train.scale_sweep=[]"])
    summary = run_pipeline(cfg)
    hist = [json.loads(l) for l in (cfg.run_dir / A.METRICS).read_text().splitlines()]
    # The fixture has 2 QA and 2 MC items: 1 of each in the loop, at every evaluation.
    assert [h["domain/qa_recall_n"] for h in hist] == [1, 1, 1]
    assert [h["domain/mc_acc_n"] for h in hist] == [1, 1, 1]
    sel = summary["selected_eval"]
    assert sel["checkpoint"] == f"checkpoint-{summary['selected']['step']}" and sel["scale"] == 1.0
    dom = sel["domain"]
    assert dom["domain/qa_recall_n"] == 2 and dom["domain/mc_acc_n"] == 2
    assert dom["domain/qa_recall_lo"] <= dom["domain/qa_recall"] <= dom["domain/qa_recall_hi"]
    # Both splits of the full set are back (the loop saw only one of each).
    assert {"domain/qa_recall/doc_only", "domain/qa_recall/qa_seen"} <= set(dom)
    held = sel["heldout_general"]
    assert held["heldout/prompts"] == 4 and held["heldout/tokens"] > 0
    assert held["heldout/kl_per_token"] > 0 and held["heldout/kl_per_prompt"] > 0
    assert json.loads((cfg.run_dir / A.SUMMARY).read_text())["selected_eval"] == json.loads(json.dumps(sel))
    report = (cfg.run_dir / A.REPORT_MD).read_text()
    assert "on what the loop does not score" in report and "| domain/qa_recall |" in report
    assert "per token (every answer token weighs the same" in report and "per prompt (mean of each prompt's token mean)" in report
    assert "KL weight steered" not in report  # no budget: the weight was fixed


def test_heldout_measure_is_off_by_default_and_asks_nothing_of_the_base(tiny_run: Path) -> None:
    from rich.console import Console

    from forgetless.train.final_eval import heldout_base_reference

    cfg = load_config(tiny_run / "cfg.yaml", ["eval.heldout_general=none"])
    assert load_config(None, []).eval.heldout_general == "none"
    # model=None: with the measure off, the base is never asked for an answer.
    assert heldout_base_reference(cfg, None, None, base_fingerprint="b", tokenizer_fingerprint="t", device="cpu", console=Console(quiet=True)) is None  # type: ignore[arg-type]
