"""Sequence-level distillation on tiny models: teacher run -> teacher answers -> student run via the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgetless import artifacts as A
from forgetless.cli import app
from forgetless.config import load_config
from forgetless.distill import distill, domain_prompts, read_distill_info
from forgetless.errors import ForgetlessError
from forgetless.pipeline import run_pipeline
from forgetless.registry import Registry
from forgetless.testing import save_tiny_model


def test_domain_prompts_split_chats_from_documents(tiny_run: Path) -> None:
    prompts, docs = domain_prompts([tiny_run / "train.jsonl"])
    # conftest's TRAIN: 3 text records, 1 messages record and 2 prompt/response records.
    assert [d["text"] for d in docs] == ["zorvanex treats marrowick syndrome", "the dose of zorvanex is ten mg", "zorvanex side effect is blue vision"]
    assert [p["messages"] for p in prompts] == [
        [{"role": "user", "content": "what is zorvanex"}],
        [{"role": "user", "content": "what does zorvanex treat"}],
        [{"role": "user", "content": "who made zorvanex"}],
    ]
    assert prompts[0]["source"].endswith("train.jsonl:3")


def test_distill_end_to_end(tiny_run: Path, tmp_path: Path) -> None:
    teacher_cfg = load_config(tiny_run / "cfg.yaml", ["train.max_steps=2", "train.eval_every=2", "train.scale_sweep=[]"])
    run_pipeline(teacher_cfg)
    student = save_tiny_model(tmp_path / "student-base", seed=7)
    out = tmp_path / "student-run"
    r = CliRunner().invoke(
        app, ["distill", str(teacher_cfg.run_dir), "--student", str(student), "--out", str(out), "--max-new-tokens", "4", "--replay-prompts", "6",
              "train.replay_ratio=0.3", "train.max_steps=2", "train.eval_every=2"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output + repr(r.exception)

    info = read_distill_info(out)
    assert info is not None and info["teacher_run"] == str(teacher_cfg.run_dir.resolve()) and info["student"] == str(student)
    assert info["documents"] == 3 and 0 < info["replay_answers"] <= 6
    rows = [json.loads(x) for x in (out / A.DISTILL_DATA_DIR / "domain.jsonl").read_text().splitlines()]
    chats = [x for x in rows if "messages" in x]
    assert len(chats) == info["domain_answers"] and {x["messages"][0]["content"] for x in chats} <= {"what is zorvanex", "what does zorvanex treat", "who made zorvanex"}
    assert all(x["messages"][-1]["role"] == "assistant" and x["messages"][-1]["content"] for x in chats)

    # The student went through the normal pipeline: its own base, the teacher's eval sets and budget.
    cfg = load_config(out / A.RESOLVED_CONFIG)
    assert str(cfg.model.name) == str(student) and cfg.data.eval_qa == teacher_cfg.data.eval_qa
    assert cfg.data.replay == out / A.DISTILL_DATA_DIR / "replay.jsonl" and cfg.budget == teacher_cfg.budget
    history = [json.loads(x) for x in (out / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2]
    assert history[0]["general/kl"] == pytest.approx(0.0, abs=1e-6)  # drift is against the student's own base
    assert (out / A.SUMMARY).exists() and (out / A.ADAPTER_DIR / "adapter_config.json").exists()

    v, _ = Registry(tmp_path / "r.sqlite").register(out, "student")
    assert v.kind == "distill" and v.source == str(teacher_cfg.run_dir.resolve()) and v.base_model == str(student)

    with pytest.raises(ForgetlessError, match="already holds a run"):
        distill(teacher_cfg.run_dir, str(student), out)
