"""lm-evaluation-harness extra: a task over a local JSONL, run on the in-memory tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (pip install 'forgetless[lm-eval]')")

from forgetless.evaluate.lm_eval import local_mc_task, run_lm_eval  # noqa: E402
from forgetless.testing import tiny_model, tiny_tokenizer  # noqa: E402


def test_local_jsonl_task_runs_on_the_in_memory_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hfcache"))
    rows = [
        {"question": "what is the capital of france", "choices": ["paris", "red", "dog"], "answer": 0},
        {"question": "what is one plus one", "choices": ["cat", "two", "green"], "answer": 1},
        {"question": "which is a color", "choices": ["python", "world", "blue"], "answer": 2},
        {"question": "what treats marrowick syndrome", "choices": ["zorvanex", "hello"], "answer": 0},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = run_lm_eval(tiny_model(), tiny_tokenizer(), [local_mc_task(data, "fl_tiny_mc")], batch_size=4)
    metrics = results["fl_tiny_mc"]
    acc = metrics["acc,none"]
    # Accuracy over 4 items is a multiple of 1/4, and the harness counted all 4 items.
    assert acc in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert 0.0 <= metrics["acc_norm,none"] <= 1.0
    assert metrics["n"] == 4
