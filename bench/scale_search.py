"""Re-run the adapter-scale calibration of a finished run: budget-aimed search against the grid.

    PYTHONPATH=src .venv/bin/python bench/scale_search.py RUN [--search budget,grid]
    PYTHONPATH=src .venv/bin/python bench/scale_search.py RUN --search '' --at 105:1.25,105:1.5

Loads the run's resolved config, base model, checkpoints and recorded evaluations, runs
``calibrate_scale`` once per search mode (the same evaluator as the run: fixed domain subset,
the cached base reference) and prints every point evaluated and the selection each mode makes.
``--at STEP:SCALE,...`` evaluates given checkpoints at given scales (above 1 too: the adapter's
update extrapolated) with the same evaluator and budget judge. Nothing in the run folder is changed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from peft import PeftModel
from rich.console import Console
from rich.table import Table

from forgetless import artifacts as A
from forgetless.pipeline import base_reference, load_base, load_data, make_evaluator
from forgetless.runfolder import read_run_folder
from forgetless.train.budget import BudgetJudge, select
from forgetless.train.calibrate import calibrate_scale, load_adapter_weights
from peft.helpers import rescale_adapter_scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--search", default="budget,grid")
    ap.add_argument("--at", default="", help="STEP:SCALE points to evaluate, comma-separated")
    args = ap.parse_args()
    console = Console()
    run = read_run_folder(args.run)
    history = run.metrics()
    cfg = run.config
    base = load_base(cfg)
    data = load_data(cfg, Path(cfg.run_dir), Console(quiet=True))
    evaluator = make_evaluator(cfg, base, data.domain, base_reference(cfg, base, Console(quiet=True)))
    first = next(h["step"] for h in history if h["step"] > 0)
    model = PeftModel.from_pretrained(base.model, str(args.run / A.CHECKPOINTS_DIR / f"checkpoint-{first}"), is_trainable=False)
    judge = BudgetJudge(cfg.budget, evaluator.ensure_base_scores(model))
    metric = "domain/qa_recall"
    for point in filter(None, args.at.split(",")):
        step, scale = point.split(":")
        load_adapter_weights(model, args.run / A.CHECKPOINTS_DIR / f"checkpoint-{int(step)}")
        t0 = time.time()
        with rescale_adapter_scale(model, float(scale)):
            m = judge.judged(evaluator.evaluate(model, step=int(step)))
        console.print(f"step {step} x {scale}: general KL {m.get('general/kl', float('nan')):.4f}, {metric} {m.get(metric, float('nan')):.3f}, "
                      f"MC {m.get('domain/mc_acc', float('nan')):.3f}, {'outside' if m.get('budget/outside', 0.0) else 'inside'} ({time.time() - t0:.0f} s)")
    for mode in filter(None, args.search.split(",")):
        mcfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"scale_search": mode})})
        t0 = time.time()
        curve = calibrate_scale(mcfg, model, evaluator, judge, history, console)
        sel = select(history, cfg.budget, curve)
        table = Table(title=f"scale_search: {mode} ({time.time() - t0:.0f} s)")
        for col in ("step", "scale", "general/kl", metric, "budget"):
            table.add_column(col)
        for c in curve:
            table.add_row(str(c["step"]), f"{c['scale']:g}", f"{c.get('general/kl', float('nan')):.4f}", f"{c.get(metric, float('nan')):.3f}",
                          "outside" if c.get("budget/outside", 0.0) else "inside")
        console.print(table)
        console.print(f"{mode}: {sel.verdict}")


if __name__ == "__main__":
    main()
