"""`forgetless demo`: two arms that differ only in the forgetting controls, and output that fits 80 columns."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from forgetless import artifacts as A
from forgetless.budget import BudgetConfig
from forgetless.config import RunConfig
from forgetless.report import print_table
from forgetless.sample import demo
from forgetless.train.config import TrainConfig


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(A.CACHE_ENV, str(tmp_path / "cache"))


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def test_arms_share_data_and_steps_and_differ_only_in_forgetting_controls(tmp_path: Path) -> None:
    arms = demo.arm_configs(tmp_path / "out")
    assert list(arms) == ["plain LoRA", "forgetless"]
    plain, fl = (_flat(c.model_dump(mode="json")) for c in arms.values())
    differ = {k for k in plain if plain[k] != fl[k]}
    assert differ - {"run_dir"} <= set(demo.FORGETTING_CONTROLS)
    assert plain["train.max_steps"] == fl["train.max_steps"] == 92
    # Speed only (same gradients): checkpointing costs 60% per step at the demo's 2 rows.
    assert plain["train.gradient_checkpointing"] is fl["train.gradient_checkpointing"] is False
    assert plain["data.train"] == fl["data.train"] and plain["data.eval_qa"] == fl["data.eval_qa"]
    assert all(Path(p).exists() for p in fl["data.train"])  # the generated sample domain
    # The forgetless arm: the library's defaults for every forgetting control, plus the budget alone.
    defaults, cfg = TrainConfig(), arms["forgetless"]
    assert (cfg.train.replay_ratio, cfg.train.kl_to_base, cfg.train.scale_sweep, cfg.train.patience) == (
        defaults.replay_ratio, defaults.kl_to_base, defaults.scale_sweep, defaults.patience)
    assert cfg.budget == BudgetConfig(general_kl=demo.BUDGET_KL)
    # Plain fine-tuning: no replay, so no KL term, no calibration, no budget.
    p = arms["plain LoRA"]
    assert (p.train.replay_ratio, p.train.kl_to_base, p.train.scale_sweep, p.budget.is_set) == (0.0, 0.0, [], False)


def test_demo_data_is_the_shipped_sample() -> None:
    folder = demo.demo_folder()
    shipped = Path(__file__).resolve().parents[2] / "examples" / "data" / "pharma"
    for name in ("docs.jsonl", "train_qa.jsonl", "heldout_qa.jsonl", "heldout_mc.jsonl"):
        assert (folder / "data" / "pharma" / name).read_bytes() == (shipped / name).read_bytes()
    assert isinstance(demo.arm_configs(Path("unused"))["plain LoRA"], RunConfig)


def _render(obj: object) -> str:
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None).print(obj)
    return buf.getvalue()


HISTORY = [
    {"step": 0, "general/kl": 0.0, "general/nll": 0.61, "general/knowledge_mc": 0.7, "domain/qa_recall": 0.0, "domain/qa_f1": 0.031,
     "domain/qa_rougeL": 0.05, "domain/mc_acc": 0.35, "domain/mc_acc/doc_only": 0.3, "domain/ppl": 9343.21},
    {"step": 92, "general/kl": 1.1364, "general/nll": 1.9, "general/knowledge_mc": 0.675, "domain/qa_recall": 0.2167, "domain/qa_f1": 0.25,
     "domain/qa_rougeL": 0.3, "domain/mc_acc": 0.55, "domain/mc_acc/doc_only": 0.4, "domain/ppl": 12.5},
]  # fmt: skip


def test_checkpoint_table_fits_80_columns() -> None:
    buf = io.StringIO()
    print_table(Console(file=buf, width=80, color_system=None), HISTORY, {"verdict": "v"})
    text = buf.getvalue()
    assert "…" not in text and max(len(l) for l in text.splitlines()) <= 80
    for word in ("KL", "know MC", "QA recall", "QA F1", "ppl", "9343.2", "1.136", "0.217"):
        assert word in text, word


def test_comparison_table_fits_80_columns() -> None:
    base = HISTORY[0]
    summaries = {
        "plain LoRA": {"base": base, "selected": {"step": 92, "scale": 1.0, "metrics": HISTORY[1]}, "verdict": "x"},
        "forgetless": {"base": base, "selected": {"step": 46, "scale": 0.75, "metrics": {**HISTORY[1], "general/kl": 0.044}}, "verdict": "y"},
    }
    text = _render(demo.comparison_table(summaries))
    assert "…" not in text and max(len(l) for l in text.splitlines()) <= 80
    for word in ("plain LoRA", "forgetless", "0.00->0.22", "1.136", "0.044", "0.70->0.68", "step 46 x0.75", "step 92"):
        assert word in text, word
    kept = {"forgetless": {"base": base, "selected": None, "verdict": "z"}}
    assert "base kept" in _render(demo.comparison_table(kept))


def test_comparison_picture_is_written(tmp_path: Path) -> None:
    base = HISTORY[0]
    summaries = {
        "plain LoRA": {"base": base, "selected": {"step": 92, "scale": 1.0, "metrics": HISTORY[1]}},
        "forgetless": {"base": base, "selected": None},
    }
    path = tmp_path / A.DEMO_COMPARISON_PNG
    demo.plot_comparison(summaries, {"plain LoRA": HISTORY, "forgetless": HISTORY[:1]}, path, budget_kl=demo.BUDGET_KL)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
