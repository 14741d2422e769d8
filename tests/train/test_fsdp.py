"""2-process FSDP on CPU (gloo) with replay and KL to the base matches one process.

The same run as tests/train/test_ddp.py's KL test, with accelerate's FSDP plugin switched on by
its environment variables (what ``accelerate launch --use_fsdp`` sets) instead of DDP. The risk
under sharding is the base forward of the KL term: the adapter is switched off on the bare model
while the parameters are sharded, so that forward must still go through the FSDP wrapper.
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


def test_fsdp_two_ranks_with_kl_and_replay_match_one_process(tiny_run: Path) -> None:
    (tiny_run / "replay.jsonl").write_text(REPLAY)
    kl = [*COMMON, "data.replay=replay.jsonl", "train.replay_ratio=0.4", "train.kl_to_base=5.0", "train.lr=0.05"]
    run_dir, spy = tiny_run / "fsdp", tiny_run / "spy"
    spy.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", str(WORKER), "run", str(tiny_run / "cfg.yaml"), f"run_dir={run_dir}",
        "train.batch_size=1", "train.num_threads=1", *kl,
    ]  # fmt: skip
    env = {**os.environ, **FSDP_ENV, "FORGETLESS_SPY_DIR": str(spy), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tiny_run, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-6000:]
    one = load_config(tiny_run / "cfg.yaml", [f"run_dir={tiny_run / 'one'}", "train.batch_size=2", *kl])
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
