"""Sharded training (FSDP) with replay and KL to the base, launched with torchrun.

On CPU processes (gloo), accelerate (1.15) does not shard: it switches to FSDP only on GPUs and
other accelerators, and otherwise keeps plain data parallelism, so the run would silently be DDP.
(With ``FSDP_SYNC_MODULE_STATES=true`` its plugin fails earlier: "There are currently no
available devices found, must be one of 'XPU', 'CUDA', ...".) forgetless refuses such a launch
with a clear error; the first test checks that. The second runs the same comparison as
tests/train/test_ddp.py's KL test (2 ranks against one process, same tolerances) where it can
shard: on a machine with 2 GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.pipeline import run_pipeline

from test_ddp import COMMON, LOSS_RTOL, REPLAY, WEIGHT_ATOL, WORKER, _free_port

FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
    "FSDP_AUTO_WRAP_POLICY": "NO_WRAP",
    "FSDP_USE_ORIG_PARAMS": "true",  # LoRA: frozen and trainable parameters share flat parameters
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    # Every rank loads the same weights; syncing them needs an accelerator device in accelerate 1.15.
    "FSDP_SYNC_MODULE_STATES": "false",
    "FSDP_CPU_RAM_EFFICIENT_LOADING": "false",
}


KL = [*COMMON, "data.replay=replay.jsonl", "train.replay_ratio=0.4", "train.kl_to_base=5.0", "train.lr=0.05"]


def _run_fsdp(tiny_run: Path, run_dir: Path, spy: Path, extra: list[str]) -> subprocess.CompletedProcess:
    (tiny_run / "replay.jsonl").write_text(REPLAY)
    spy.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", str(WORKER), "run", str(tiny_run / "cfg.yaml"), f"run_dir={run_dir}",
        "train.batch_size=1", "train.num_threads=1", *KL, *extra,
    ]  # fmt: skip
    env = {**os.environ, **FSDP_ENV, "FORGETLESS_SPY_DIR": str(spy), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=tiny_run, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="with 2 GPUs FSDP shards: the comparison below runs instead")
def test_fsdp_on_cpu_processes_is_refused_not_run_as_ddp(tiny_run: Path) -> None:
    proc = _run_fsdp(tiny_run, tiny_run / "fsdp", tiny_run / "spy", [])
    assert proc.returncode != 0
    assert "FSDP was requested (ACCELERATE_USE_FSDP=true) but accelerate" in proc.stderr and "MULTI_CPU" in proc.stderr
    assert not list((tiny_run / "fsdp" / A.CHECKPOINTS_DIR).glob("checkpoint-*"))  # refused before the first step


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="accelerate shards only on accelerators: needs 2 GPUs")
def test_fsdp_two_ranks_with_kl_and_replay_match_one_process(tiny_run: Path) -> None:
    run_dir, spy = tiny_run / "fsdp", tiny_run / "spy"
    proc = _run_fsdp(tiny_run, run_dir, spy, ["train.precision=fp32", "eval.precision=fp32"])
    assert proc.returncode == 0, proc.stderr[-6000:]
    # It really ran sharded: every rank's Trainer had FSDP on at each evaluation.
    for rank in (0, 1):
        events = [json.loads(l) for l in (spy / f"rank{rank}.jsonl").read_text().splitlines()]
        evals = [e for e in events if e["event"] == "evaluate"]
        assert [e["step"] for e in evals] == [2, 4] and all(e["fsdp"] for e in evals), (rank, evals)
    one = load_config(tiny_run / "cfg.yaml", [f"run_dir={tiny_run / 'one'}", "train.batch_size=2", *KL])
    run_pipeline(one)

    def state(run: Path) -> list[dict]:
        return json.loads((run / A.CHECKPOINTS_DIR / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]

    s1, sf = state(one.run_dir), state(run_dir)
    assert any(h.get("reg/kl_to_base", 0) > 0 for h in s1)
    l1, lf = [h["loss"] for h in s1 if "loss" in h], [h["loss"] for h in sf if "loss" in h]
    assert len(lf) == 4 and lf == pytest.approx(l1, rel=LOSS_RTOL)
    wf = load_file(str(run_dir / A.ADAPTER_DIR / "adapter_model.safetensors"))
    w1 = load_file(str(one.run_dir / A.ADAPTER_DIR / "adapter_model.safetensors"))
    assert wf.keys() == w1.keys()
    for k in w1:
        torch.testing.assert_close(wf[k], w1[k], atol=WEIGHT_ATOL, rtol=0)
