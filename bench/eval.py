"""Benchmark the general suites on the embedded base model: scores with 95% CI, and the time the
in-loop subsets add to every checkpoint evaluation (wall and CPU seconds), as a share of training.

    .venv/bin/python bench/eval.py                      # in-loop timing + full-suite scores
    .venv/bin/python bench/eval.py --skip-full          # in-loop timing only
    .venv/bin/python bench/eval.py --train-seconds 360 --evals 5

CPU seconds are reported next to wall seconds because on a shared machine wall time mostly
measures the neighbours; the share of training uses wall time (what a user waits).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from rich.console import Console
from rich.table import Table

from forgetless.evaluate.suites import IN_LOOP_LIMITS, SUITES, general_suite_scores, suite_items
from forgetless.models import load_model, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=48, help="one batch holds every in-loop item of a suite")
    ap.add_argument("--train-seconds", type=float, default=360.0, help="training wall time of the demo run")
    ap.add_argument("--evals", type=int, default=5, help="evaluations per demo run")
    ap.add_argument("--skip-full", action="store_true", help="only time the in-loop subsets")
    args = ap.parse_args()

    console = Console()
    tok, model = load_tokenizer(args.model), load_model(args.model)
    load = os.getloadavg()[0]

    timings: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    in_loop = general_suite_scores(model, tok, limit_per_suite=IN_LOOP_LIMITS, batch_size=args.batch_size, timings=timings)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    t = Table(title=f"in-loop general suites, {args.model}, torch threads={torch.get_num_threads()}, load avg {load:.1f}")
    for col in ("suite", "items", "score [95% CI]", "wall s"):
        t.add_column(col)
    for s in SUITES:
        sc = in_loop[s]
        t.add_row(s, str(sc.n), f"{sc.value:.3f} [{sc.ci_low:.3f}, {sc.ci_high:.3f}]", f"{timings[s]:.1f}")
    share = args.evals * wall / args.train_seconds
    t.add_row("total", "", "", f"{wall:.1f} (cpu {cpu:.1f})")
    console.print(t)
    console.print(f"in-loop share of training: {args.evals} x {wall:.1f} s / {args.train_seconds:.0f} s = {100 * share:.1f}%")

    if args.skip_full:
        return
    timings = {}
    t0 = time.perf_counter()
    full = general_suite_scores(model, tok, limit_per_suite=None, batch_size=args.batch_size, timings=timings)
    t = Table(title=f"full general suites, {args.model} (chance: knowledge_mc 0.25)")
    for col in ("suite", "items", "score [95% CI]", "wall s"):
        t.add_column(col)
    for k, sc in full.items():
        suite = k.split("/")[0]
        t.add_row(k, str(sc.n), f"{sc.value:.3f} [{sc.ci_low:.3f}, {sc.ci_high:.3f}]", f"{timings[suite]:.1f}" if k == suite else "")
    t.add_row("total", str(sum(len(suite_items(s)) for s in SUITES)), "", f"{time.perf_counter() - t0:.1f}")
    console.print(t)


if __name__ == "__main__":
    main()
