"""Forgetting benchmark: naive full fine-tuning vs naive LoRA vs the forgetless default.

Same data (the sample domain), same number of optimizer steps, same evaluation. Prints domain
gain against general drift (KL to base) and general accuracy, and draws a Pareto plot.

    python bench/forgetting.py --steps 110 --extra train.batch_size=4 train.eval_every=22
    python bench/forgetting.py --steps 110 --seed 1 ...   # the same arms again on seed 1

Arms run one after another and each writes ``<out>/<arm>/arm.json``; ``--arms`` reruns a subset
(e.g. a sweep of the forgetless arm with ``--ours``) and the table is built from every arm found
under ``--out``, so a long CPU run can be done in pieces.

The issue's goal: the forgetless default keeps >= 90% of full fine-tuning's domain gain at
<= 10% of its general KL. Arms named ``... seed N`` are seeds of one recipe, and the goal is
judged on each recipe's means over its seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.pipeline import run_pipeline
from forgetless.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"

# Each arm: overrides on top of examples/quickstart.yaml.
# Both LoRA arms train the same adapter at the same LR, so that the only difference between them is
# the forgetting controls. Rank 64 with alpha 64 at lr 1e-3 (warmup 0.1) rather than the demo's r16,
# alpha 32, lr 2e-3: in the sweep below (docs/benchmarks.md, sessions 4-5) it learned the held-out
# questions at least as well under KL-to-base, with a gentler start; the demo keeps r16 for speed.
LORA = ["lora.r=64", "lora.alpha=64", "train.lr=1e-3", "train.warmup_ratio=0.1"]
ARMS: dict[str, list[str]] = {
    # What a user does first: every weight trainable, a typical full-fine-tuning LR.
    "naive full FT": ["lora.mode=full", "train.lr=5e-5", "train.scale_sweep=[]", "train.replay_ratio=0"],
    # LoRA alone; nothing holds it near the base.
    "naive LoRA": [*LORA, "train.scale_sweep=[]", "train.replay_ratio=0"],
    # forgetless: the same LoRA plus the library's defaults for staying close to the base: 30%
    # self-generated replay trained by KL-to-base at weight 1, early stop after 3 evaluations
    # outside the budget, the adapter-scale sweep. (They are the defaults; they are spelled out
    # because the demo config turns replay off and the sweep down.)
    "forgetless default": [*LORA, "train.replay_ratio=0.3", "train.kl_to_base=1.0", "train.patience=3", "train.scale_sweep=[0.25, 0.5, 0.75]"],
}
DOMAIN = ("domain/qa_recall", "domain/mc_acc")
# The goal is judged on the pipeline's own primary domain score (train/select.py): answer recall.
GOAL_METRIC = "domain/qa_recall"
# Its harder part: the 20 questions on the 10 drugs whose facts appear only in documents (no
# training Q&A). Shown next to the goal, not part of it.
DOC_ONLY = "domain/qa_recall/doc_only"


def arm_dir(out: Path, name: str) -> Path:
    """Where an arm's run lives under the benchmark's output folder."""
    return out / name.replace(" ", "-")


def result_row(run_dir: Path, summary: dict) -> dict:
    """The metrics of the arm's selected (or final) model against its base."""
    hist = [json.loads(l) for l in (run_dir / A.METRICS).read_text().splitlines()]
    base = hist[0]
    sel = summary.get("selected") or {}
    chosen = next((h for h in hist if h["step"] == sel.get("step")), hist[-1])
    if sel.get("scale", 1.0) != 1.0:
        curve = json.loads((run_dir / A.SCALE_CURVE).read_text())
        chosen = next(c for c in curve if c["scale"] == sel["scale"])
    cfg = load_config(run_dir / A.RESOLVED_CONFIG)
    row = {"step": chosen["step"], "scale": sel.get("scale", 1.0), "seed": cfg.seed, "general/kl": chosen["general/kl"], **per_step(run_dir, cfg.train)}
    # The evaluator's 95% bootstrap interval: with 60 QA items it is about +-0.11, wider than the
    # differences between most sweep points, so the table shows it next to the score.
    if f"{GOAL_METRIC}_lo" in chosen:
        row[f"{GOAL_METRIC} 95%"] = f"{chosen[GOAL_METRIC]:.3f} [{chosen[f'{GOAL_METRIC}_lo']:.3f}, {chosen[f'{GOAL_METRIC}_hi']:.3f}]"
    for k in DOMAIN + ("general/knowledge_mc", "general/math", "domain/mc_acc/doc_only", DOC_ONLY):
        if k in chosen:
            row[k] = chosen[k]
            row[f"gain {k}"] = chosen[k] - base[k]
    return row


def per_step(run_dir: Path, train: TrainConfig) -> dict[str, float]:
    """Rows and tokens one optimizer step trains on, on average, split into domain and replay.

    With the same number of steps, arms can still differ in what a step holds (replay rows take
    part of a batch, or come on top of it): the table shows it rather than hiding it.
    """
    ds = json.loads((run_dir / A.RUN_INFO).read_text())["dataset"]
    batch = train.batch_size * train.grad_accum
    domain_share = (ds["rows"] - ds["replay_rows"]) / ds["rows"]
    return {
        "domain rows/step": round(batch * domain_share, 2),
        "replay rows/step": round(batch * (1 - domain_share), 2),
        "tokens/step": round(batch * ds["tokens_per_epoch"] / ds["rows"]),
    }


def goal_budget(args: argparse.Namespace) -> float:
    """The forgetless arm's KL budget: as given, else the goal's 10% of the full-FT arm's KL.

    The seed-0 arm's, whatever the seed being run: every seed of a recipe gets the same budget.
    """
    if args.budget_kl is not None:
        return args.budget_kl
    full = arm_dir(args.out, "naive full FT") / "arm.json"
    return round(0.1 * json.loads(full.read_text())["general/kl"], 4) if full.exists() else 0.05


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per arm (same for all)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-forgetting")
    ap.add_argument("--budget-kl", type=float, default=None, help="the forgetless arm's general KL budget (default: the goal, 10%% of the full-FT arm's KL when that arm is in --out, else 0.05)")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides applied to every arm")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms to (re)run; others are read back from --out")
    ap.add_argument("--ours", nargs="*", default=[], help="extra overrides for the forgetless arm (a sweep point)")
    ap.add_argument("--name", default="", help="suffix for the forgetless arm's name, to keep sweep points side by side")
    ap.add_argument("--seed", type=int, default=0, help="seed for every arm run now (data order, LoRA init, replay sampling); arms with seed != 0 get ' seed N' in their name")
    args = ap.parse_args()
    console = Console(width=240)
    for name in [a.strip() for a in args.arms.split(",") if a.strip()]:
        if name not in ARMS:
            raise SystemExit(f"unknown arm {name!r}; arms: {', '.join(ARMS)}")
        overrides = list(ARMS[name])
        label = name
        if name == "forgetless default":
            overrides += args.ours
            label = f"{name} {args.name}".strip()
        if args.seed:
            overrides.append(f"seed={args.seed}")
            label += f" seed {args.seed}"
        run_dir = arm_dir(args.out, label)
        shutil.rmtree(run_dir, ignore_errors=True)
        budget = goal_budget(args) if name == "forgetless default" else "null"
        # KL on all 130 general prompts in every arm (the demo's config uses 65 in the loop for
        # speed): the goal compares KLs across arms, so they must come from the same prompts.
        ov = [f"run_dir={run_dir}", f"train.max_steps={args.steps}", f"budget.general_kl={budget}", "eval.general_limit=0", *overrides, *args.extra]
        t = time.time()
        summary = run_pipeline(load_config(QUICKSTART, ov), console=console)
        row = {**result_row(run_dir, summary), "seconds": round(time.time() - t), "overrides": ov}
        (run_dir / "arm.json").write_text(json.dumps({"arm": label, **row}, indent=2))
    # Rows are re-read from each run folder, so arms recorded by an older version of this script
    # show the newer columns too; arm.json adds the wall time and the overrides.
    rows = {}
    for p in sorted(args.out.glob("*/arm.json")):
        r = json.loads(p.read_text())
        rows[r["arm"]] = {**r, **result_row(p.parent, json.loads((p.parent / A.SUMMARY).read_text()))}
    table = Table(title=f"Forgetting benchmark: {args.steps} steps each, sample domain, {load_config(QUICKSTART).model.name}")
    cols = ["step", "scale", f"{GOAL_METRIC} 95%", "gain domain/qa_recall", f"gain {DOC_ONLY}", "gain domain/mc_acc", "general/kl", "gain general/knowledge_mc", "domain rows/step", "replay rows/step", "tokens/step", "seconds"]
    table.add_column("arm")
    for c in cols:
        short = c.replace("domain/", "d/").replace("general/", "g/").replace(" rows/step", "/step").replace("tokens/step", "tok/step").replace("qa_recall", "recall")
        table.add_column(short, justify="right")
    for name, r in rows.items():
        table.add_row(name, *[f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    console.print(table)
    for line in goal_lines(rows):
        console.print(line)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "pareto.png")


def recipe(name: str) -> str:
    """An arm's name without its ``seed N`` suffix, so the seeds of one recipe group together.

    By name, not by overrides: an arm recorded by an older version of this script lists fewer
    (now spelled-out) overrides for the same recipe.
    """
    head, sep, tail = name.rpartition(" seed ")
    return head if sep and tail.isdigit() else name


def groups_of(rows: dict[str, dict]) -> dict[str, list[dict]]:
    """Arms grouped by recipe (their seeds together), in the order the rows come."""
    groups: dict[str, list[dict]] = {}
    for name, r in rows.items():
        groups.setdefault(recipe(name), []).append(r)
    return groups


def mean(group: list[dict], key: str) -> float:
    """Mean of ``key`` over the seeds of one recipe (0 where an arm lacks it)."""
    return sum(r.get(key, 0.0) for r in group) / len(group)


def goal_lines(rows: dict[str, dict]) -> list[str]:
    """The issue's goal for every forgetless recipe, judged on means over seeds.

    One run cannot separate 82% from 90%: the held-out set has 60 questions (a step of 1.7%
    of recall) and full FT's own selected recall moved from 0.283 to 0.217 between two seeds. So
    each recipe's mean gain and mean KL over its seeds are compared with the mean of full FT's.
    """
    groups = groups_of(rows)
    full = groups.get("naive full FT")
    if full is None:
        return []
    g_full, kl_full, doc_full = mean(full, f"gain {GOAL_METRIC}"), mean(full, "general/kl"), mean(full, f"gain {DOC_ONLY}")
    lines = [f"naive full FT over {len(full)} seed(s): {GOAL_METRIC} gain {g_full:.3f}, general KL {kl_full:.3f}"]
    for key, g in groups.items():
        if not key.startswith("forgetless"):
            continue
        keep = mean(g, f"gain {GOAL_METRIC}") / g_full if g_full > 0 else float("nan")
        gains = ", ".join(f"{r.get(f'gain {GOAL_METRIC}', 0.0):.3f}" for r in g)
        kls = ", ".join(f"{r['general/kl']:.3f}" for r in g)
        seeds = f"seeds {', '.join(str(r['seed']) for r in g)}" if len(g) > 1 else f"seed {g[0]['seed']}"
        doc = mean(g, f"gain {DOC_ONLY}") / doc_full if doc_full > 0 else float("nan")
        lines.append(
            f"{key} ({seeds}; gains {gains}; KL {kls}): keeps {keep:.0%} of full FT's {GOAL_METRIC} gain "
            f"(goal >= 90%) at {mean(g, 'general/kl') / kl_full:.0%} of its general KL (goal <= 10%); "
            f"on doc-only drugs {doc:.0%} of full FT's gain"
        )
    return lines


def plot(rows: dict[str, dict], path: Path) -> None:
    """Domain gain (y) against general KL (x), with the goal's corner shaded: up and left is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    groups = groups_of(rows)
    full = groups.get("naive full FT")
    if full is not None and mean(full, "general/kl") > 0:
        # The goal: >= 90% of full FT's domain gain at <= 10% of its KL (means over seeds).
        top = max(r.get(f"gain {GOAL_METRIC}", 0.0) for r in rows.values()) * 1.1
        ax.fill_between([0, 0.1 * mean(full, "general/kl")], 0.9 * mean(full, f"gain {GOAL_METRIC}"), top, color="tab:green", alpha=0.12, label="goal")
    for i, (name, r) in enumerate(rows.items()):
        # A legend rather than labels: sweep points often share a recall (steps of 1/60) and a KL.
        # Markers change with the colours, so more than 10 arms stay distinguishable.
        ax.scatter(r["general/kl"], r.get(f"gain {GOAL_METRIC}", 0.0), s=50, marker="os^D"[i // 10 % 4], label=name.removeprefix("forgetless default "))
    for key, g in groups.items():
        if len(g) > 1:
            ax.scatter(mean(g, "general/kl"), mean(g, f"gain {GOAL_METRIC}"), s=220, marker="*", edgecolors="black", label=f"{key.removeprefix('forgetless default ')}: mean of {len(g)} seeds")
    ax.set_xscale("symlog", linthresh=0.01)  # KL spans 0.01-1.5 across arms
    ax.set_xlabel("general KL(base || tuned), nats/token (lower is better)")
    ax.set_ylabel(f"{GOAL_METRIC} gain over base")
    ax.set_title("Domain gain vs forgetting (one run per point; stars: means over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
