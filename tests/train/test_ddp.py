"""2-process DDP on CPU (gloo) matches one process at the same global batch, and only rank 0 writes.

One `forgetless run` under torchrun (2 ranks x per-device batch 1) against the same run in this
process (1 rank x batch 2). The 4 packed rows have 6, 3, 6 and 13 labelled tokens, so per-device
loss normalisation would visibly change the loss; transformers' ``average_tokens_across_devices``
(on by default) normalises by the global token count instead, which makes DDP equal to one
process up to float summation order. The test also checks that it tells the two apart.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.data import load_examples
from forgetless.models import load_model, load_tokenizer
from forgetless.pipeline import run_pipeline
from forgetless.train.dataset import PackedCollator, build_dataset

WORKER = Path(__file__).with_name("_ddp_worker.py")
# max_length 16 packs the tiny training file into 4 rows of unequal label counts; 4 steps of
# global batch 2 are two epochs, so the sampler's per-epoch reshuffle is shared across ranks too.
# fp32 on purpose: the test checks DDP's arithmetic, and bf16 autocast (the default on AMX CPUs)
# rounds a batch of 1 and a batch of 2 differently (measured: KL 0.00124 vs 0.00120 at step 2).
COMMON = ["data.max_length=16", "train.max_steps=4", "train.eval_every=2", "train.scale_sweep=[]", "train.precision=fp32", "eval.precision=fp32"]

# Tolerances. Both runs do the same float32 arithmetic except for summation order (gradients are
# all-reduced as g0 + g1 instead of summed inside one matmul; 1 vs 2 threads per process).
# Measured on this test: losses agree to 1.1e-7 relative, adapter weights to 9e-7 absolute (Adam
# divides by sqrt(v), so tiny gradient differences reach the weights almost unscaled), metrics
# to 8e-8. We allow 10-100x that. Per-device normalisation instead would move the first loss by
# 0.8% relative (rows with 6 and 3 labelled tokens), which the last block asserts we would catch.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
METRIC_ATOL = 1e-5
# Perplexity (~60 here) is an exponential: evaluating with the LoRA merged into one weight copy
# (evaluate/precision.py) measured a 2e-7 relative gap on it (1.2e-5 absolute), rounding only.
METRIC_RTOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(tiny_run: Path, run_dir: Path, spy: Path, overrides: list[str]) -> None:
    """`forgetless run` under torchrun, 2 ranks x per-device batch 1, events logged under ``spy``."""
    spy.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(WORKER), "run", str(tiny_run / "cfg.yaml"), f"run_dir={run_dir}", "train.batch_size=1", "train.num_threads=1", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "FORGETLESS_SPY_DIR": str(spy), "OMP_NUM_THREADS": "1"}
    # A deadlock at save/evaluate shows up as this timeout (a healthy run takes ~20 s on 2 cores).
    proc = subprocess.run(cmd, cwd=tiny_run, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _events(spy: Path) -> dict[int, list[dict]]:
    return {int(p.stem[4:]): [json.loads(l) for l in p.read_text().splitlines()] for p in sorted(spy.glob("rank*.jsonl"))}


def _row_nll(model_dir: str, rows: list[dict]) -> list[tuple[float, int]]:
    """(summed next-token NLL, labelled tokens) per row, on the base model (what step 1 sees)."""
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir).eval()
    out = []
    with torch.no_grad():
        for r in rows:
            b = PackedCollator(pad_id=tok.pad_token_id or 0)([r])
            logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
            labels = b["labels"][:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
            out.append((float(nll), int((labels != -100).sum())))
    return out


def test_ddp_two_ranks_match_one_process(tiny_run: Path) -> None:
    ddp_dir, spy = tiny_run / "ddp", tiny_run / "spy"
    _run_two_ranks(tiny_run, ddp_dir, spy, COMMON)

    one = load_config(tiny_run / "cfg.yaml", [f"run_dir={tiny_run / 'one'}", "train.batch_size=2", *COMMON])
    run_pipeline(one)

    # --- who wrote what: both ranks evaluate, rank 0 alone writes ---------------------------------
    ev = _events(spy)
    assert set(ev) == {0, 1}
    for rank in (0, 1):
        assert [e["step"] for e in ev[rank] if e["event"] == "evaluate"] == [2, 4], rank
    assert [(e["file"], e["step"]) for e in ev[0] if e["event"] == "metrics_line"] == [(A.METRICS, 0), (A.METRICS, 2), (A.METRICS, 4)]
    assert [e["checkpoint"] for e in ev[0] if e["event"] == "mark_complete"] == ["checkpoint-2", "checkpoint-4"]
    assert not [e for e in ev[1] if e["event"] in ("metrics_line", "mark_complete")]

    ckpts = ddp_dir / A.CHECKPOINTS_DIR
    for name in ("checkpoint-2", "checkpoint-4"):
        files = {p.name for p in (ckpts / name).iterdir()}
        assert {A.CHECKPOINT_COMPLETE, "rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= files
        # The marker comes after every rank's files (the trainer waits for all ranks before writing it).
        marker = (ckpts / name / A.CHECKPOINT_COMPLETE).stat().st_mtime_ns
        assert marker >= max((ckpts / name / f).stat().st_mtime_ns for f in files - {A.CHECKPOINT_COMPLETE})
    assert (ddp_dir / A.SUMMARY).exists() and (ddp_dir / A.ADAPTER_DIR / "adapter_model.safetensors").exists()

    # --- same training: metrics, per-step losses, final adapter -------------------------------------
    hd = [json.loads(l) for l in (ddp_dir / A.METRICS).read_text().splitlines()]
    h1 = [json.loads(l) for l in (one.run_dir / A.METRICS).read_text().splitlines()]
    assert [h["step"] for h in hd] == [h["step"] for h in h1] == [0, 2, 4]
    for a, b in zip(h1, hd):
        for k, v in a.items():
            if isinstance(v, float) and not k.startswith("time/"):
                assert b[k] == pytest.approx(v, abs=METRIC_ATOL, rel=METRIC_RTOL), (a["step"], k)

    def losses(run: Path) -> list[float]:
        state = json.loads((run / A.CHECKPOINTS_DIR / "checkpoint-4" / "trainer_state.json").read_text())
        return [h["loss"] for h in state["log_history"] if "loss" in h]

    ld, l1 = losses(ddp_dir), losses(one.run_dir)
    assert len(ld) == len(l1) == 4
    assert ld == pytest.approx(l1, rel=LOSS_RTOL)

    wd = load_file(str(ckpts / "checkpoint-4" / "adapter_model.safetensors"))
    w1 = load_file(str(one.run_dir / A.CHECKPOINTS_DIR / "checkpoint-4" / "adapter_model.safetensors"))
    assert wd.keys() == w1.keys()
    assert any(t.abs().max() > 1e-3 for k, t in w1.items() if "lora_B" in k)  # it trained
    for k in w1:
        torch.testing.assert_close(wd[k], w1[k], atol=WEIGHT_ATOL, rtol=0)

    # --- the check can tell token-normalised from per-device-normalised losses --------------------
    tok = load_tokenizer(one.model.name)
    ds = build_dataset(tok, load_examples(one.data.train), max_length=16)
    per_row = _row_nll(one.model.name, [ds[i] for i in range(len(ds))])
    assert sorted(n for _, n in per_row) == [3, 6, 6, 13]
    # Step 1 runs on the base weights: its loss is the token mean of one pair of rows; find the pair.
    pairs = [(i, j) for i in range(len(per_row)) for j in range(i + 1, len(per_row))]
    token_mean = {p: (per_row[p[0]][0] + per_row[p[1]][0]) / (per_row[p[0]][1] + per_row[p[1]][1]) for p in pairs}
    batch = min(pairs, key=lambda p: abs(token_mean[p] - l1[0]))
    assert token_mean[batch] == pytest.approx(l1[0], rel=1e-5)
    row_mean = (per_row[batch[0]][0] / per_row[batch[0]][1] + per_row[batch[1]][0] / per_row[batch[1]][1]) / 2
    assert per_row[batch[0]][1] != per_row[batch[1]][1]  # with equal counts both normalisations coincide
    assert abs(row_mean - ld[0]) > 100 * LOSS_RTOL * ld[0], "per-device normalisation would pass too"


REPLAY = """\
{"prompt": "what is the capital of france", "response": "paris is the capital of france"}
{"prompt": "what is two plus two", "response": "two plus two is four"}
{"prompt": "hello you are a cat", "response": "hello i am a cat"}
"""


def test_ddp_kl_to_base_is_a_token_mean_over_ranks(tiny_run: Path) -> None:
    """With replay rows on one rank and none on the other, KL-to-base under DDP must equal one
    process's token mean (each rank's own mean, averaged, would halve it on such steps), and a rank
    without replay rows must still join the all-reduce of the token count (or DDP hangs)."""
    (tiny_run / "replay.jsonl").write_text(REPLAY)
    kl = [*COMMON, "data.replay=replay.jsonl", "train.replay_ratio=0.4", "train.kl_to_base=5.0", "train.lr=0.05"]
    ddp_dir = tiny_run / "ddp-kl"
    _run_two_ranks(tiny_run, ddp_dir, tiny_run / "spy-kl", kl)
    one = load_config(tiny_run / "cfg.yaml", [f"run_dir={tiny_run / 'one-kl'}", "train.batch_size=2", *kl])
    run_pipeline(one)

    def state(run: Path) -> list[dict]:
        return json.loads((run / A.CHECKPOINTS_DIR / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]

    s1, sd = state(one.run_dir), state(ddp_dir)
    kl1 = [h["reg/kl_to_base"] for h in s1 if "reg/kl_to_base" in h]
    assert kl1 and any(k > 0 for k in kl1)  # the KL term was active
    l1, ld = [h["loss"] for h in s1 if "loss" in h], [h["loss"] for h in sd if "loss" in h]
    assert ld == pytest.approx(l1, rel=LOSS_RTOL)
    wd = load_file(str(ddp_dir / A.CHECKPOINTS_DIR / "checkpoint-4" / "adapter_model.safetensors"))
    w1 = load_file(str(one.run_dir / A.CHECKPOINTS_DIR / "checkpoint-4" / "adapter_model.safetensors"))
    for k in w1:
        torch.testing.assert_close(wd[k], w1[k], atol=WEIGHT_ATOL, rtol=0)
