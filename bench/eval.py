"""Benchmark evaluation: the in-loop evaluations' share of training time on the demo, and the
general suites' scores with 95% CI on the embedded base model.

    .venv/bin/python bench/eval.py                         # run the demo (examples/quickstart.yaml), print the share
    .venv/bin/python bench/eval.py --run runs/quickstart   # the same table for a finished run folder
    .venv/bin/python bench/eval.py --full-suites           # also score the full general suites on the base

The share is in-loop evaluation time (the evaluations at checkpoints, both suites) over the rest
of the Trainer's wall time; issue 4's goal is <= 15%. The step-0 evaluation of the base runs
before training and is cached per base model, data and settings, so it is reported on its own line.
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

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]


def share_table(run: Path) -> Table:
    """Per-evaluation seconds and the in-loop share, from a finished run folder."""
    from forgetless import artifacts as A

    summary = json.loads((run / A.SUMMARY).read_text())
    timing = summary["timing"]
    info = json.loads((run / A.RUN_INFO).read_text())
    evals = [json.loads(line) for line in (run / A.METRICS).read_text().splitlines() if line.strip()]
    evals = [e for e in evals if "general/kl" in e]
    extra = info.get("extra", info)
    t = Table(title=f"in-loop evaluation, {run} (eval precision {extra.get('eval_precision', '?')}, train precision {extra.get('train_precision', '?')})")
    for col in ("step", "general s", "domain s", "total s", "note"):
        t.add_column(col, justify="right" if col != "note" else "left")
    for e in evals:
        g, d = e.get("time/eval_general_s", 0.0), e.get("time/eval_domain_s", 0.0)
        note = "base, read from cache (0 s this run)" if e.get("time/eval_cached") else ("base, before training" if e["step"] == 0 else "in the loop")
        t.add_row(str(e["step"]), f"{g:.1f}", f"{d:.1f}", f"{g + d:.1f}", note)
    rest = timing["train_s"] - timing["eval_in_loop_s"]
    t.add_row("", "", "", "", "")
    t.add_row("train", "", "", f"{rest:.1f}", "Trainer wall time minus in-loop evaluations")
    t.add_row("share", "", "", f"{100 * timing['eval_share']:.1f}%", f"{timing['eval_in_loop_count']} evaluations, {timing['eval_in_loop_s']:.1f} s / {rest:.1f} s (goal <= 15%)")
    return t


def run_demo(out: Path, overrides: list[str]) -> None:
    """`forgetless run examples/quickstart.yaml` into ``out`` (what `make demo` runs)."""
    cmd = [sys.executable, "-m", "forgetless.cli", "run", str(ROOT / "examples" / "quickstart.yaml"), f"run_dir={out}", *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"demo run: {time.perf_counter() - t0:.0f} s wall, load average {os.getloadavg()[0]:.1f}", flush=True)


def full_suites(model_name: str, batch_size: int) -> Table:
    """Every item of every general suite on the base model, with 95% CIs."""
    from forgetless.evaluate.suites import SUITES, general_suite_scores, suite_items
    from forgetless.models import load_model, load_tokenizer

    tok, model = load_tokenizer(model_name), load_model(model_name)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    full = general_suite_scores(model, tok, limit_per_suite=None, batch_size=batch_size, timings=timings)
    t = Table(title=f"full general suites, {model_name}, fp32 (chance: knowledge_mc 0.25)")
    for col in ("suite", "items", "score [95% CI]", "wall s"):
        t.add_column(col)
    for k, sc in full.items():
        suite = k.split("/")[0]
        t.add_row(k, str(sc.n), f"{sc.value:.3f} [{sc.ci_low:.3f}, {sc.ci_high:.3f}]", f"{timings[suite]:.1f}" if k == suite else "")
    t.add_row("total", str(sum(len(suite_items(s)) for s in SUITES)), "", f"{time.perf_counter() - t0:.1f}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a finished run folder (default: run the demo into a temporary folder)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for the demo run (repeatable)")
    ap.add_argument("--full-suites", action="store_true", help="also score the full general suites on the base model")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=48)
    args = ap.parse_args()

    console = Console()
    if args.run is not None:
        console.print(share_table(args.run))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run_demo(Path(tmp) / "demo", args.set)
            console.print(share_table(Path(tmp) / "demo"))
    if args.full_suites:
        console.print(full_suites(args.model, args.batch_size))


if __name__ == "__main__":
    main()
