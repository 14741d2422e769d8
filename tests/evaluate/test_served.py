"""The served system's scores: each item scored on the side the router sends it to."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from forgetless import artifacts
from forgetless.evaluate.config import EvalConfig
from forgetless.evaluate.served import add_served_section, evaluate_served, served_markdown, served_report
from forgetless.runfolder import read_run_folder
from forgetless.serve.router import load_router

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import make_base, make_run  # noqa: E402

# Tiny models, but every test scores all suites on both sides: 41 s for the file on the shared 2-core box.
pytestmark = pytest.mark.slow

QA = [{"question": "what drug treats marrowick syndrome", "answer": "zorvanex"},
      {"question": "what is the capital of france", "answer": "paris"}]  # fmt: skip
MC = [{"question": "zorvanex dose mg", "choices": ["ten", "red"], "answer": 0},
      {"question": "hello world", "choices": ["cat", "dog"], "answer": 1}]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    run = make_run(root / "run", make_base(root / "base"), seed=5)
    for name, rows in (("qa.jsonl", QA), ("mc.jsonl", MC)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = yaml.safe_load((run / artifacts.RESOLVED_CONFIG).read_text())
    cfg["data"] = {"train": [str(root / "qa.jsonl")], "eval_qa": str(root / "qa.jsonl"), "eval_mc": str(root / "mc.jsonl")}
    cfg["eval"] = {"general_limit": 4, "general_max_new_tokens": 4, "qa_max_new_tokens": 4, "batch_size": 8,
                   "general_suites": ["knowledge_mc"], "suite_limits": {"knowledge_mc": 6}}  # fmt: skip
    (run / artifacts.RESOLVED_CONFIG).write_text(yaml.safe_dump(cfg))
    (run / artifacts.REPORT_MD).write_text("# a run\n\nverdict\n")
    return run


def _set_threshold(run: Path, threshold: float) -> None:
    info = json.loads((run / artifacts.ROUTER_INFO).read_text())
    info["threshold"] = threshold
    (run / artifacts.ROUTER_INFO).write_text(json.dumps(info))


def test_served_scores_follow_the_routes(run):
    original = load_router(run).threshold
    try:
        # Everything to the base: the served system IS the base (KL exactly 0, every score the base's).
        _set_threshold(run, -1e9)
        rep = evaluate_served(run)
        for key, t in rep["scores"].items():
            assert t["served"]["value"] == pytest.approx(t["base"]["value"]), key
            assert t["to_adapter"] == 0
        assert rep["scores"]["general/kl"]["served"]["value"] == 0.0
        assert rep["routing"]["kinds"]["domain"]["rate"] == 0.0
        assert rep["routing"]["kinds"]["general"]["rate"] == 1.0
        # Everything to the adapter: the served system IS the adapter.
        _set_threshold(run, 1e9)
        rep = evaluate_served(run)
        for key, t in rep["scores"].items():
            assert t["served"]["value"] == pytest.approx(t["adapter"]["value"]), key
        assert rep["scores"]["general/kl"]["adapter"]["value"] > 0  # a random non-zero adapter drifts
        assert rep["routing"]["kinds"]["neighbour/veterinary"]["rate"] == 0.0  # none to the base
        assert rep["routing"]["kinds"]["domain"]["n"] == len(QA) + len(MC)
    finally:
        _set_threshold(run, original)


def test_mixed_routing_takes_each_item_from_its_side(run):
    rep = evaluate_served(run)
    t = rep["scores"]["domain/qa_recall"]
    served, ad, base = t["served"]["values"], t["adapter"]["values"], t["base"]["values"]
    assert len(served) == len(QA)
    assert all(s in (a, b) for s, a, b in zip(served, ad, base))
    kl = rep["scores"]["general/kl"]
    # Per prompt: the adapter's KL where routed to the adapter, else 0; so served <= adapter.
    assert kl["served"]["value"] <= kl["adapter"]["value"] + 1e-12
    assert sum(v > 0 for v in kl["served"]["values"]) <= kl["to_adapter"]


def test_report_section_is_appended_once(run):
    rep = add_served_section(run)
    add_served_section(run, rep=rep)  # again: the section is replaced, not added twice
    text = (run / artifacts.REPORT_MD).read_text()
    assert text.startswith("# a run\n\nverdict\n")
    assert text.count("## Served system") == 1
    assert "| neighbour/legal |" in text and "| general/kl |" in text
    assert json.loads((run / artifacts.SERVED_JSON).read_text())["router"]["method"] == "mahalanobis_tokens"
    assert "served" in served_markdown(json.loads((run / artifacts.SERVED_JSON).read_text()))


def test_served_report_is_on_by_default_and_can_be_turned_off(run, tmp_path):
    import io

    from rich.console import Console

    cfg = read_run_folder(run).config
    console = Console(file=io.StringIO())
    (run / artifacts.SERVED_JSON).unlink(missing_ok=True)
    before = (run / artifacts.REPORT_MD).read_text()
    assert EvalConfig().served_report is True  # the default: every run reports the served system
    off = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"served_report": False})})
    assert served_report(off, run, console) is None
    assert not (run / artifacts.SERVED_JSON).exists() and (run / artifacts.REPORT_MD).read_text() == before

    on = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"served_report": True})})
    assert served_report(on, tmp_path, console) is None  # no adapter exported: nothing is served, said so
    assert "nothing is served" in console.file.getvalue()
    rep = served_report(on, run, console)
    assert rep is not None and json.loads((run / artifacts.SERVED_JSON).read_text())["scores"].keys() == rep["scores"].keys()
    assert (run / artifacts.REPORT_MD).read_text().count("## Served system") == 1
