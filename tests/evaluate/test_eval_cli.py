"""`forgetless eval` end to end on a tiny local model and a tiny LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgetless.cli import app
from forgetless.testing import save_tiny_model, tiny_model


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("evalcli")
    model_dir = save_tiny_model(root / "model")
    peft = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(root / "adapter", safe_serialization=True)
    return model_dir, root / "adapter"


def test_eval_two_columns_with_deltas(tiny_dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    model_dir, adapter_dir = tiny_dirs
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "what is the capital of france", "answer": "paris", "split": "a"}\n'
                  '{"question": "what treats marrowick syndrome", "answer": "zorvanex", "split": "b"}\n')
    res = CliRunner().invoke(
        app,
        ["eval", "--model", str(model_dir), "--adapter", str(adapter_dir), "--suites", "general,domain",
         "--limit", "1", "--domain-qa", str(qa), "--out", str(tmp_path / "out"), "--batch-size", "4"],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "out" / "eval.json").read_text())
    labels = [c["label"] for c in data["columns"]]
    assert len(labels) == 2 and labels[1].endswith("adapter")
    base = data["scores"][labels[0]]
    assert base["general/math"]["n"] == 1 and base["general/knowledge_mc"]["n"] == 1
    assert base["domain/qa_f1"]["n"] == 2 and base["domain/qa_f1/a"]["n"] == 1
    d = data["deltas_vs_first"][labels[1]]["general/knowledge_mc"]
    assert d["paired"] and d["verdict"] in {"dropped", "improved", "no significant change"}
    assert "general/math" in res.output  # the table


def test_eval_user_errors_exit_2(tiny_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, _ = tiny_dirs
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "--model", str(model_dir), "--suites", "poetry"])
    assert r.exit_code != 0 and "unknown suite" in str(r.exception or r.output)
    r = runner.invoke(app, ["eval", "--model", str(model_dir), "--adapter", str(tmp_path)])
    assert r.exit_code != 0 and "adapter_config.json" in str(r.exception or r.output)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    r = runner.invoke(app, ["eval", "--model", str(model_dir), "--suites", "domain", "--domain-qa", str(bad)])
    assert r.exit_code != 0 and "bad.jsonl:1" in str(r.exception)
