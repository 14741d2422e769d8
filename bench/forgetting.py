"""Forgetting benchmark: naive full fine-tuning vs naive LoRA vs the forgetless default.

Same data (a domain folder: the sample domain by default), same evaluation. Prints domain gain
against general drift (KL to base) and general accuracy, and draws a Pareto plot.

    python bench/forgetting.py --steps 110 --extra train.batch_size=4 eval.batch_size=64
    python bench/forgetting.py --steps 110 --seed 1 ...   # the same arms again on seed 1
    python bench/forgetting.py --arms "naive full FT" --lr-sweep   # the baseline at 3 LRs
    python bench/forgetting.py --arms "naive full FT" --lr-sweep 1e-4   # one point of that sweep

The forgetless arm is what a user gets: the library's defaults plus ``budget.general_kl`` and
nothing else (no rank, LR or step overrides; ``--ours`` adds some for a sweep point, and its name
then says so). The naive arms are recipes, trained for ``--steps`` steps; ``--lr-sweep`` runs
each at 3 LRs so the goal is judged against the best one, not a strawman. ``--extra`` applies
to every arm, except its ``train.``/``lora.`` items, which go to the naive arms only.

Arms run one after another and each writes ``<out>/<arm>/arm.json``; ``--arms`` reruns a subset
(e.g. a sweep of the forgetless arm with ``--ours``) and the table is built from every arm found
under ``--out``, so a long CPU run can be done in pieces.

The goal: the forgetless default reaches at least the best full fine-tuning LR's held-out QA
recall gain at general KL <= the budget. Arms named ``... seed N`` are seeds of one recipe, and
the goal is judged on each recipe's means over its seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from forgetless import artifacts as A
from forgetless.config import load_config
from forgetless.io import atomic_write_json
from forgetless.pipeline import run_pipeline
from forgetless.runfolder import read_run_folder
from forgetless.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "data" / "pharma"

# The measurement every arm shares (not a recipe): the domain files, and the evaluation settings
# of examples/quickstart.yaml that sessions 3-5 measured with (eval batch 64, 24-token general
# answers, 20-token QA answers), on all 130 general prompts.
# The held-out general measure is off by default (it costs the demo minutes); every arm here scores
# its selected checkpoint on it, so no arm's drift is judged only on the prompts it was steered by.
# The served-system report is off: this bench compares training recipes, and it would add minutes per arm.
EVAL = ["eval.batch_size=64", "eval.general_max_new_tokens=24", "eval.qa_max_new_tokens=20", "eval.general_limit=0", "eval.heldout_general=builtin", "eval.served_report=false"]


def domain_overrides(data: Path) -> list[str]:
    """A domain folder laid out like examples/data/pharma: documents, training Q&A, held-out sets."""
    d = data.resolve()
    return [f"data.train=[{d / 'docs.jsonl'}, {d / 'train_qa.jsonl'}]", f"data.eval_qa={d / 'heldout_qa.jsonl'}", f"data.eval_mc={d / 'heldout_mc.jsonl'}", "data.max_length=256"]


# Each arm: overrides on top of the library's defaults (plus the domain and EVAL).
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
    # forgetless: the library's defaults (replay, KL-to-base steered by the budget, patience, the
    # adapter-scale sweep, rank, LR, schedule, training length) and only the budget, set in main().
    "forgetless default": [],
}
# --lr-sweep: 3 LRs per naive arm, so the goal is judged against the best of them. LoRA's are
# centred on its default, and its middle one learned most (quillmark). Full FT's sit above its
# default: in 110 steps every doubling from 5e-5 to 2e-4 learned more on every domain (pharma
# 0.222 (3 seeds), 0.517, 0.850 at 5e-5, 1e-4, 2e-4), and 4e-4 more again on pharma and verrand
# but less on quillmark (docs/benchmarks.md), so a sweep must reach up to where full FT peaks, and
# points below it only add weaker ones.
LR_SWEEP: dict[str, tuple[str, ...]] = {"naive full FT": ("1e-4", "2e-4", "4e-4"), "naive LoRA": ("5e-4", "1e-3", "2e-3")}
DEFAULT_BUDGET_KL = 0.05
# Each arm's record in its folder; --resume takes its presence for "this arm finished".
ARM_RECORD = "arm.json"
DOMAIN = ("domain/qa_recall", "domain/mc_acc")
# The goal is judged on the pipeline's own primary domain score (forgetless.budget.primary_metric): answer recall.
GOAL_METRIC = "domain/qa_recall"
# Its harder part: the 20 questions on the 10 drugs whose facts appear only in documents (no
# training Q&A). Shown next to the goal, not part of it.
DOC_ONLY = "domain/qa_recall/doc_only"


def arm_dir(out: Path, name: str) -> Path:
    """Where an arm's run lives under the benchmark's output folder."""
    return out / name.replace(" ", "-")


def result_row(run_dir: Path, summary: dict) -> dict:
    """The metrics of the arm's selected (or final) model against its base."""
    folder = read_run_folder(run_dir)
    hist = folder.metrics()
    base = hist[0]
    sel = summary.get("selected") or {}
    chosen = next((h for h in hist if h["step"] == sel.get("step")), hist[-1])
    if sel.get("scale", 1.0) != 1.0:
        curve = folder.scale_curve()
        chosen = next(c for c in curve if c["scale"] == sel["scale"])
    cfg = folder.config
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
    ds = read_run_folder(run_dir).info()["dataset"]
    batch = train.batch_size * train.grad_accum
    domain_share = (ds["rows"] - ds["replay_rows"]) / ds["rows"]
    return {
        "domain rows/step": round(batch * domain_share, 2),
        "replay rows/step": round(batch * (1 - domain_share), 2),
        "tokens/step": round(batch * ds["tokens_per_epoch"] / ds["rows"]),
    }


def split_extra(extra: list[str]) -> tuple[list[str], list[str]]:
    """``--extra`` as (items for every arm, recipe items for the naive arms only)."""
    recipe = [e for e in extra if e.split("=", 1)[0].split(".")[0] in ("train", "lora")]
    return [e for e in extra if e not in recipe], recipe


def arm_action(run_dir: Path, resume: bool) -> str:
    """What to do with an arm's folder: "start" afresh, "continue" its unfinished run, or "keep" its record.

    Without --resume every arm named is run from scratch. With it, a finished arm (its arm.json
    written) is kept and an unfinished one continues from its last complete checkpoint, so a
    crash (a full disk, a killed job) costs the steps since that checkpoint, not the whole arm.
    """
    if not resume or not (run_dir / A.METRICS).exists():
        return "start"
    return "keep" if (run_dir / ARM_RECORD).exists() else "continue"


def planned_arms(names: list[str], args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(label, overrides) for every arm to run now: the LR sweep expands each naive arm into 3."""
    common, recipe = split_extra(args.extra)
    out = []
    for name in names:
        if name not in ARMS:
            raise SystemExit(f"unknown arm {name!r}; arms: {', '.join(ARMS)}")
        if name == "forgetless default":
            variants = [(f"{name} {args.name}".strip(), [f"budget.general_kl={args.budget_kl}", *args.ours, *common])]
        else:
            base = [*ARMS[name], f"train.max_steps={args.steps}", "budget.general_kl=null", *common, *recipe]
            lrs: list[str | None] = [None]
            if args.lr_sweep is not None:
                # ``--lr-sweep 1e-4`` runs one point of the sweep, so a long CPU sweep can be done in pieces.
                lrs = [lr for lr in LR_SWEEP[name] if not args.lr_sweep or lr in args.lr_sweep]
                if not lrs:
                    raise SystemExit(f"--lr-sweep {' '.join(args.lr_sweep)}: none of {name!r}'s sweep points ({', '.join(LR_SWEEP[name])})")
            variants = [(name if lr is None else f"{name} lr {lr}", base + ([f"train.lr={lr}"] if lr else [])) for lr in lrs]
        for label, ov in variants:
            if args.seed:
                ov = [*ov, f"seed={args.seed}"]
                label += f" seed {args.seed}"
            out.append((label, ov))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per arm (same for all)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-forgetting")
    ap.add_argument("--data", type=Path, default=SAMPLE, help="domain folder (docs.jsonl, train_qa.jsonl, heldout_qa.jsonl, heldout_mc.jsonl)")
    ap.add_argument("--budget-kl", type=float, default=DEFAULT_BUDGET_KL, help="the forgetless arm's budget.general_kl (its only setting)")
    ap.add_argument("--lr-sweep", nargs="*", default=None, metavar="LR", help="run each naive arm at its 3 LRs (LR_SWEEP) instead of its default one; with LRs, only those points of the sweep")
    ap.add_argument("--extra", nargs="*", default=[], help="overrides for every arm (train./lora. items: the naive arms only)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms to (re)run; others are read back from --out")
    ap.add_argument("--ours", nargs="*", default=[], help="extra overrides for the forgetless arm (a sweep point)")
    ap.add_argument("--name", default="", help="suffix for the forgetless arm's name, to keep sweep points side by side")
    ap.add_argument("--resume", action="store_true", help="keep arms already finished in --out and continue unfinished ones from their last complete checkpoint")
    ap.add_argument("--seed", type=int, default=0, help="seed for every arm run now (data order, LoRA init, replay sampling); arms with seed != 0 get ' seed N' in their name")
    args = ap.parse_args()
    console = Console(width=240)
    for label, overrides in planned_arms([a.strip() for a in args.arms.split(",") if a.strip()], args):
        run_dir = arm_dir(args.out, label)
        action = arm_action(run_dir, args.resume)
        if action == "keep":
            console.print(f"{label}: finished before, kept ({run_dir / ARM_RECORD})")
            continue
        if action == "start":
            shutil.rmtree(run_dir, ignore_errors=True)
        ov = [f"run_dir={run_dir}", *domain_overrides(args.data), *EVAL, *overrides]
        t = time.time()
        summary = run_pipeline(load_config(None, ov), resume=action == "continue", console=console)
        # A continued arm's seconds are this call's only: the record says so rather than pass them off as the arm's wall.
        row = {**result_row(run_dir, summary), "seconds": round(time.time() - t), "resumed": action == "continue", "overrides": ov}
        # Atomic: a record cut short by a crash would be kept by --resume as a finished arm.
        atomic_write_json(run_dir / ARM_RECORD, {"arm": label, **row})
    rows = read_arms(args.out)
    table = Table(title=f"Forgetting benchmark: {args.data.name} domain, naive arms {args.steps} steps, forgetless the library defaults + budget.general_kl {args.budget_kl}")
    cols = ["step", "scale", f"{GOAL_METRIC} 95%", "gain domain/qa_recall", f"gain {DOC_ONLY}", "gain domain/mc_acc", "general/kl", "gain general/knowledge_mc", "domain rows/step", "replay rows/step", "tokens/step", "seconds"]
    table.add_column("arm")
    for c in cols:
        short = c.replace("domain/", "d/").replace("general/", "g/").replace(" rows/step", "/step").replace("tokens/step", "tok/step").replace("qa_recall", "recall")
        table.add_column(short, justify="right")
    for name, r in rows.items():
        table.add_row(name, *[f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    console.print(table)
    for line in goal_lines(rows, args.budget_kl):
        console.print(line)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "pareto.png", args.budget_kl, args.data.name)


def read_arms(out: Path) -> dict[str, dict]:
    """Every arm under ``out`` by name: re-read from its run folder where that is at hand, else as
    its ``arm.json`` recorded it when it ran.

    Re-reading shows the newer columns on arms recorded by an older version of this script; a bare
    ``arm.json`` (a run folder copied without its weights, e.g. the records under ``docs/``) keeps a
    result whose run folder is gone in the table and the plot.
    """
    rows = {}
    for p in sorted(out.glob(f"*/{ARM_RECORD}")):
        r = json.loads(p.read_text())
        if (p.parent / A.METRICS).exists():
            r = {**r, **result_row(p.parent, read_run_folder(p.parent).summary())}
        rows[r["arm"]] = r
    return rows


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
    """Mean of ``key`` over the seeds of one recipe that measured it (NaN when none did): a record
    that lacks a column must not count as a zero."""
    vals = [r[key] for r in group if key in r]
    return sum(vals) / len(vals) if vals else float("nan")


def best_full_ft(groups: dict[str, list[dict]]) -> tuple[str, list[dict]] | None:
    """The full fine-tuning recipe (one LR of the sweep, or the plain arm) with the best mean gain."""
    full = {k: g for k, g in groups.items() if k.startswith("naive full FT")}
    if not full:
        return None
    key = max(full, key=lambda k: mean(full[k], f"gain {GOAL_METRIC}"))
    return key, full[key]


def doc_only_clause(gain: float, full_gain: float) -> str:
    """The recipe's gain on facts seen only in documents, next to full FT's: a share where full FT
    learned some, the plain gain where it learned none (a share of zero is no figure)."""
    if math.isnan(gain) or math.isnan(full_gain):
        return "doc-only facts not recorded"
    if full_gain > 0:
        return f"on doc-only facts {gain / full_gain:.0%} of full FT's gain"
    return f"on doc-only facts a gain of {gain:.3f} where full FT gained none"


def goal_lines(rows: dict[str, dict], budget: float) -> list[str]:
    """The goal for every forgetless recipe, judged on means over seeds: at least the best full
    fine-tuning LR's held-out gain, at general KL <= ``budget``.

    One run cannot separate close recipes: the held-out set has 60 questions (a step of 1.7%
    of recall) and full FT's own selected recall moved from 0.283 to 0.217 between two seeds. So
    each recipe's mean gain and mean KL over its seeds are compared with the mean of full FT's.
    """
    groups = groups_of(rows)
    best = best_full_ft(groups)
    if best is None:
        return []
    full_key, full = best
    g_full, kl_full, doc_full = mean(full, f"gain {GOAL_METRIC}"), mean(full, "general/kl"), mean(full, f"gain {DOC_ONLY}")
    lines = [f"best full FT ({full_key}) over {len(full)} seed(s): {GOAL_METRIC} gain {g_full:.3f}, general KL {kl_full:.3f}"]
    for key, g in groups.items():
        if not key.startswith("forgetless"):
            continue
        keep = mean(g, f"gain {GOAL_METRIC}") / g_full if g_full > 0 else float("nan")
        gains = ", ".join(f"{r.get(f'gain {GOAL_METRIC}', 0.0):.3f}" for r in g)
        kls = ", ".join(f"{r['general/kl']:.3f}" for r in g)
        seeds = f"seeds {', '.join(str(r['seed']) for r in g)}" if len(g) > 1 else f"seed {g[0]['seed']}"
        doc_n = sum(f"gain {DOC_ONLY}" in r for r in g)
        lines.append(
            f"{key} ({seeds}; gains {gains}; KL {kls}): {keep:.0%} of the best full FT's {GOAL_METRIC} gain "
            f"(goal >= 100%) at mean general KL {mean(g, 'general/kl'):.3f} (goal <= {budget}), {mean(g, 'general/kl') / kl_full:.0%} of full FT's; "
            + doc_only_clause(mean(g, f"gain {DOC_ONLY}"), doc_full)
            + (f" ({doc_n} of {len(g)} seeds recorded it)" if doc_n < len(g) else "")
        )
    return lines


def plot(rows: dict[str, dict], path: Path, budget: float, domain: str = "") -> None:
    """Domain gain (y) against general KL (x), with the goal's corner shaded: up and left is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    groups = groups_of(rows)
    best = best_full_ft(groups)
    if best is not None:
        # The goal: at least the best full FT's domain gain at KL <= the budget (means over seeds).
        top = max(r.get(f"gain {GOAL_METRIC}", 0.0) for r in rows.values()) * 1.1
        ax.fill_between([0, budget], mean(best[1], f"gain {GOAL_METRIC}"), top, color="tab:green", alpha=0.12, label="goal")
    for i, (name, r) in enumerate(rows.items()):
        # A legend rather than labels: sweep points often share a recall (steps of 1/60) and a KL.
        # Markers change with the colours, so more than 10 arms stay distinguishable.
        ax.scatter(r["general/kl"], r.get(f"gain {GOAL_METRIC}", 0.0), s=50, marker="os^D"[i // 10 % 4], label=name)
    for key, g in groups.items():
        if len(g) > 1:
            ax.scatter(mean(g, "general/kl"), mean(g, f"gain {GOAL_METRIC}"), s=220, marker="*", edgecolors="black", label=f"{key}: mean of {len(g)} seeds")
    ax.set_xscale("symlog", linthresh=0.01)  # KL spans 0.01-1.5 across arms
    ax.set_xlabel("general KL(base || tuned), nats/token (lower is better)")
    ax.set_ylabel(f"{GOAL_METRIC} gain over base")
    ax.set_title(f"{domain + ': ' if domain else ''}domain gain vs forgetting (one run per point; stars: means over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
