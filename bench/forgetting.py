"""Forgetting benchmark: naive full fine-tuning vs naive LoRA vs the forgetless default.

Same data (the sample domain), same number of optimizer steps, same evaluation. Prints domain
gain against general drift (KL to base) and general accuracy, and draws a Pareto plot.

    python bench/forgetting.py --steps 60 --out runs/bench-forgetting

The issue's goal: the forgetless default keeps >= 90% of full fine-tuning's domain gain at
<= 10% of its general KL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from forgetless.config import load_config
from forgetless.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"

# Each arm: overrides on top of examples/quickstart.yaml.
ARMS: dict[str, list[str]] = {
    # What a user does first: every weight trainable, a typical full-fine-tuning LR.
    "naive full FT": ["lora.mode=full", "train.lr=5e-5", "train.scale_sweep=[]"],
    # LoRA alone, at the LR that learns the domain fast on CPU; nothing holds it near the base.
    "naive LoRA": ["train.scale_sweep=[]"],
    # forgetless: LoRA + self-generated replay with KL to the base + scale calibration inside a budget.
    "forgetless default": [
        "train.replay_ratio=0.2",
        "train.kl_to_base=1.0",
        "train.scale_sweep=[0.25, 0.5, 0.75]",
    ],
}
DOMAIN = ("domain/mc_acc", "domain/qa_recall")


def result_row(run_dir: Path, summary: dict) -> dict:
    """The metrics of the arm's selected (or final) model against its base."""
    hist = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    base = hist[0]
    sel = summary.get("selected") or {}
    chosen = next((h for h in hist if h["step"] == sel.get("step")), hist[-1])
    if sel.get("scale", 1.0) != 1.0:
        curve = json.loads((run_dir / "scale_curve.json").read_text())
        chosen = next(c for c in curve if c["scale"] == sel["scale"])
    row = {"step": chosen["step"], "scale": sel.get("scale", 1.0), "general/kl": chosen["general/kl"]}
    for k in DOMAIN + ("general/knowledge_mc", "general/math", "domain/mc_acc/doc_only"):
        if k in chosen:
            row[k] = chosen[k]
            row[f"gain {k}"] = chosen[k] - base[k]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per arm (same for all)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-forgetting")
    ap.add_argument("--budget-kl", type=float, default=0.05, help="forgetless default's general KL budget")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides applied to every arm")
    args = ap.parse_args()
    console = Console(width=200)
    shutil.rmtree(args.out, ignore_errors=True)
    rows: dict[str, dict] = {}
    for name, overrides in ARMS.items():
        run_dir = args.out / name.replace(" ", "-")
        ov = [f"run_dir={run_dir}", f"train.max_steps={args.steps}", f"budget.general_kl={args.budget_kl if name == 'forgetless default' else 'null'}", *overrides, *args.extra]
        t = time.time()
        summary = run_pipeline(load_config(QUICKSTART, ov), console=console)
        rows[name] = {**result_row(run_dir, summary), "seconds": round(time.time() - t)}
    table = Table(title=f"Forgetting benchmark: {args.steps} steps each, sample domain, {load_config(QUICKSTART).model.name}")
    cols = ["step", "scale", "gain domain/mc_acc", "gain domain/mc_acc/doc_only", "gain domain/qa_recall", "general/kl", "gain general/knowledge_mc", "gain general/math", "seconds"]
    table.add_column("arm")
    for c in cols:
        table.add_column(c.replace("domain/", "d/").replace("general/", "g/"), justify="right")
    for name, r in rows.items():
        table.add_row(name, *[f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    console.print(table)
    full, ours = rows["naive full FT"], rows["forgetless default"]
    g_full, g_ours = full.get("gain domain/mc_acc", 0.0), ours.get("gain domain/mc_acc", 0.0)
    keep = g_ours / g_full if g_full > 0 else float("nan")
    kl_share = ours["general/kl"] / full["general/kl"] if full["general/kl"] > 0 else float("nan")
    console.print(f"forgetless default keeps {keep:.0%} of full FT's domain gain (goal >= 90%) at {kl_share:.0%} of its general KL (goal <= 10%)")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "pareto.png")


def plot(rows: dict[str, dict], path: Path) -> None:
    """Domain gain (y) against general KL (x): up and left is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in rows.items():
        ax.scatter(r["general/kl"], r.get("gain domain/mc_acc", 0.0), s=60)
        ax.annotate(name, (r["general/kl"], r.get("gain domain/mc_acc", 0.0)), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("general KL(base || tuned), nats/token (lower is better)")
    ax.set_ylabel("domain MC accuracy gain over base")
    ax.set_title("Domain gain vs forgetting")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
