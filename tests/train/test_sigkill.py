"""A `forgetless run` killed with SIGKILL mid-training and resumed ends where an uninterrupted run does.

SIGKILL cannot be caught: no exception handler, ``finally`` or atexit runs, so whatever was on
disk at that instant is all the resume has. On top of what the kill left, we plant the two
things a kill during a write leaves behind, and check the resume never trusts them:
a newer checkpoint folder without its COMPLETE marker whose files are cut short, and a torn last
line in metrics.jsonl.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.pipeline import run_pipeline

FORGETLESS = Path(sys.executable).with_name("forgetless")
# 9 steps, both suites + a checkpoint every 3 (no scale sweep: it runs after training, and is
# covered by the pipeline tests). The kill lands right after checkpoint-3 is marked complete, which
# leaves 2 evaluations and saves still to do: seconds of work, so the run cannot finish between
# the marker appearing and the signal (asserted below).
OVERRIDES = ["train.max_steps=9", "train.eval_every=3", "train.scale_sweep=[]"]


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before {path.name} appeared:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)


def _plant_half_written_checkpoint(ckpts: Path, step: int, source: Path) -> Path:
    """checkpoint-<step> as a kill mid-save leaves it: some files, the last one truncated, no marker."""
    half = ckpts / f"checkpoint-{step}"
    half.mkdir()
    for name in ("adapter_config.json", "trainer_state.json"):
        (half / name).write_bytes((source / name).read_bytes())
    weights = (source / "adapter_model.safetensors").read_bytes()
    (half / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 3])
    return half


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tiny_run: Path) -> None:
    full = load_config(tiny_run / "cfg.yaml", [f"run_dir={tiny_run / 'full'}", *OVERRIDES])
    run_pipeline(full)

    cut_dir = tiny_run / "cut"
    ckpts = cut_dir / A.CHECKPOINTS_DIR
    cmd = [str(FORGETLESS), "run", str(tiny_run / "cfg.yaml"), f"run_dir={cut_dir}", *OVERRIDES]
    log = tiny_run / "killed_run.log"
    # Output goes to a file, not a pipe: nobody reads a pipe while we poll, and a full one would block the run.
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tiny_run, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for(ckpts / "checkpoint-3" / A.CHECKPOINT_COMPLETE, proc, log, timeout=240)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Killed mid-training: the final checkpoint and the run's outputs were never written.
    assert not (ckpts / "checkpoint-9").exists() and not (cut_dir / A.SUMMARY).exists()

    last = max((p for p in ckpts.iterdir() if (p / A.CHECKPOINT_COMPLETE).exists()), key=lambda p: int(p.name.split("-")[1]))
    half = _plant_half_written_checkpoint(ckpts, 8, last)
    with open(cut_dir / A.METRICS, "a", encoding="utf-8") as f:
        f.write('{"step": 8, "general/kl": 0.1')  # an append cut short by the kill: no newline

    res = subprocess.run([*cmd, "--resume"], cwd=tiny_run, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "removed incomplete checkpoint-8" in res.stderr
    assert f"resuming from {last.name}" in res.stderr
    assert not half.exists()

    a = [json.loads(l) for l in (full.run_dir / A.METRICS).read_text().splitlines()]
    b = [json.loads(l) for l in (cut_dir / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in a] == [h["step"] for h in b] == [0, 3, 6, 9]
    for ha, hb in zip(a, b):
        for k, v in ha.items():
            if isinstance(v, float) and not k.startswith("time/"):
                assert hb[k] == pytest.approx(v, abs=1e-3), (ha["step"], k)
    # Weights too: the resumed optimizer, scheduler, RNG and data order were the uninterrupted run's.
    wa = load_file(str(full.run_dir / A.CHECKPOINTS_DIR / "checkpoint-9" / "adapter_model.safetensors"))
    wb = load_file(str(ckpts / "checkpoint-9" / "adapter_model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=0)
    sa, sb = (json.loads((d / A.SUMMARY).read_text())["selected"] for d in (full.run_dir, cut_dir))
    assert sa is not None and sb is not None
    assert (sb["step"], sb["scale"], sb["metric"]) == (sa["step"], sa["scale"], sa["metric"])
    assert sb["score"] == pytest.approx(sa["score"], abs=1e-3)
