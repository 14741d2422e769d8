"""How closely the cheap per-step drift signal tracks the general KL the budget is judged on.

Every optimizer step with replay rows measures KL(base || tuned) on them (the KL term's own
value); each evaluation records their mean since the previous one (``train/replay_kl``) next to
the general KL on the general prompts (``general/kl``). This prints both per evaluation, their
ratio, the Pearson correlation over evaluations, and the KL weight and QA recall, for one or more
run folders (e.g. the two arms of a controller-vs-fixed comparison), plus the held-out general
drift of the selected checkpoint when the run measured it.

    python bench/kl_signal.py runs/bench-kl-control/forgetless-default-controller runs/bench-kl-control/forgetless-default-fixed
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from forgetless import artifacts as A
from forgetless.runfolder import read_run_folder


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation of two equally long lists (nan when either is constant or too short)."""
    n = len(xs)
    if n < 2:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders")
    args = ap.parse_args()
    console = Console(width=200)
    for run in args.runs:
        folder = read_run_folder(run)
        hist = folder.metrics()
        table = Table(title=str(run))
        for c in ("step", "general/kl (token mean)", "replay KL (mean of steps)", "ratio replay/general", "KL weight", "QA recall", "budget"):
            table.add_column(c, justify="right")
        pairs = []
        for h in hist:
            g, r = h.get("general/kl"), h.get("train/replay_kl")
            if h["step"] > 0 and g is not None and r is not None:
                pairs.append((r, g))
            ratio = f"{r / g:.2f}" if g and r is not None else ""
            w = h.get("kl_control/weight")
            table.add_row(str(h["step"]), f"{g:.4f}", "" if r is None else f"{r:.4f}", ratio, "" if w is None else f"{w:.3f}",
                          f"{h.get('domain/qa_recall', float('nan')):.3f}", str(h.get("budget/state", "")))  # fmt: skip
        console.print(table)
        if pairs:
            rs, gs = [p[0] for p in pairs], [p[1] for p in pairs]
            console.print(f"  over {len(pairs)} evaluations: Pearson r(replay KL, general KL) = {pearson(rs, gs):.3f}; "
                          f"ratio replay/general mean {sum(r / g for r, g in pairs) / len(pairs):.2f}, range {min(r / g for r, g in pairs):.2f}-{max(r / g for r, g in pairs):.2f}")  # fmt: skip
        s = folder.read_json(A.SUMMARY)
        if s:
            sel, ev = s.get("selected") or {}, s.get("selected_eval") or {}
            held = ev.get("heldout_general")
            if held:
                console.print(f"  selected step {sel.get('step')} scale {sel.get('scale')}: held-out general KL per token {held['heldout/kl_per_token']:.4f}, "
                              f"per prompt {held['heldout/kl_per_prompt']:.4f} [{held['heldout/kl_per_prompt_lo']:.4f}, {held['heldout/kl_per_prompt_hi']:.4f}] "
                              f"({held['heldout/prompts']} prompts, {held['heldout/tokens']} tokens; per token first 48: {held['heldout/kl_per_token_first48']:.4f}, after: {held['heldout/kl_per_token_after48'] or float('nan'):.4f} on {held['heldout/tokens_after48']} tokens)")  # fmt: skip
            dom = ev.get("domain")
            if dom and "domain/qa_recall" in dom:
                console.print(f"  full domain sets on the selected checkpoint: QA recall {dom['domain/qa_recall']:.3f} [{dom['domain/qa_recall_lo']:.3f}, {dom['domain/qa_recall_hi']:.3f}] (n {dom['domain/qa_recall_n']})")


if __name__ == "__main__":
    main()
