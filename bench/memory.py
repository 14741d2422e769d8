"""Peak RSS of a whole `forgetless run` per model and evaluation-set size.

    nice -n 10 .venv/bin/python bench/memory.py [--models smollm2-135m-instruct,gemma3-270m]
        [--sizes 60,360] [--steps 2] [--out /tmp/forgetless-memory] [--extra eval.served_report=false ...]

Each measurement is a fresh subprocess running ``forgetless run`` on the sample domain
(examples/data/pharma: docs.jsonl + train_qa.jsonl), with an evaluation set of ``size`` items:
half held-out QA, half multiple choice, the 60 + 60 sample items repeated as needed (360 = 180 QA
+ 180 MC). Settings are the defaults (LoRA r64 on all linear layers, batch 4 x 256 tokens,
replay 0.3 with KL to the base, evaluation batch 64, gradient checkpointing) except: ``--steps`` optimizer steps with one
evaluation after them (plus the base at step 0), no adapter-scale sweep, the demo's general
reference (65 prompts, 24-token answers), and replay rows read from train_qa.jsonl instead of
generated (generating 200 answers costs minutes and little memory; the replay rows' KL term is
what costs memory, and it runs the same). The router is calibrated as in every run.

Every run gets an empty forgetless cache (the converted models linked in, not converted again),
so the base reference and the step-0 evaluation are computed inside the measured run. Peak RSS
is the child's ``ru_maxrss`` as ``os.wait4`` returns it (the ``resource.getrusage`` record of
that one child): the largest resident set the run reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHARMA = ROOT / "examples" / "data" / "pharma"


def repeated(src: Path, n: int, dest: Path) -> Path:
    """``dest`` holding the first ``n`` records of ``src`` cycled (the file repeated as needed)."""
    recs = [line for line in src.read_text().splitlines() if line.strip()]
    dest.write_text("\n".join(recs[i % len(recs)] for i in range(n)) + "\n")
    return dest


def run_once(model: str, size: int, steps: int, out: Path, extra: list[str] | None = None) -> dict[str, object]:
    """One ``forgetless run`` in a child process; returns its peak RSS, wall time and exit code."""
    work = out / f"{model}-{size}"
    work.mkdir(parents=True, exist_ok=True)
    qa = repeated(PHARMA / "heldout_qa.jsonl", size // 2, work / "qa.jsonl")
    mc = repeated(PHARMA / "heldout_mc.jsonl", size - size // 2, work / "mc.jsonl")
    run_dir = work / f"run-{int(time.time())}"
    overrides = [
        f"run_dir={run_dir}", f"model.name={model}", f"data.eval_qa={qa}", f"data.eval_mc={mc}",
        f"train.max_steps={steps}", f"train.eval_every={steps}", "train.scale_sweep=[]",
        f"data.replay={PHARMA / 'train_qa.jsonl'}", "eval.general_limit=65", "eval.general_max_new_tokens=24", *(extra or []),
    ]  # fmt: skip
    env = dict(os.environ)
    from forgetless.cache import cache_root

    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
    (cache / "models").symlink_to(cache_root() / "models")
    env["FORGETLESS_CACHE"] = str(cache)
    config = work / "run.yaml"
    config.write_text(f"data:\n  train:\n    - {PHARMA / 'docs.jsonl'}\n    - {PHARMA / 'train_qa.jsonl'}\n")
    cmd = [sys.executable, "-c", "from forgetless.cli import main; main()", "run", str(config), *overrides]
    t0 = time.time()
    log = (work / "log.txt").open("w")
    # A child of its own, so RUSAGE_CHILDREN is this run's alone: wait4 returns the child's rusage.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    return {
        "model": model, "items": size, "peak_rss_gb": usage.ru_maxrss / 1024**2, "wall_s": time.time() - t0,
        "rc": os.waitstatus_to_exitcode(status), "log": str(work / "log.txt"),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--sizes", default="60,360")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "forgetless-memory")
    ap.add_argument("--extra", nargs="*", default=[], help="more config overrides for every run (to split a peak by stage)")
    a = ap.parse_args()
    rows = []
    for model in a.models.split(","):
        for size in (int(s) for s in a.sizes.split(",")):
            r = run_once(model, size, a.steps, a.out, a.extra)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n| model | eval items (QA + MC) | peak RSS GB | wall s | exit |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['items']} ({r['items'] // 2} + {r['items'] - r['items'] // 2}) | {r['peak_rss_gb']:.2f} | {r['wall_s']:.0f} | {r['rc']} |")


if __name__ == "__main__":
    main()
