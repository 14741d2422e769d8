"""The run's human-facing outputs: the curves PNG and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .budget import BudgetConfig, judge
from .io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from rich.console import Console

# Columns shown in tables, in order, when present. Generative scores and KL come first: multiple
# choice alone hides the forgetting users notice (answers drifting into the domain's style).
DOMAIN_COLS = ["domain/qa_recall", "domain/qa_f1", "domain/qa_rougeL", "domain/mc_acc", "domain/mc_acc/doc_only", "domain/ppl"]
GENERAL_COLS = ["general/kl", "general/nll", "general/knowledge_mc", "general/math", "general/code"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def plot_curves(history: list[dict[str, Any]], path: Path, *, budget_kl: float | None = None) -> None:
    """Two panels against steps: domain metrics (left) and general drift (right)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for col in DOMAIN_COLS:
        if col != "domain/ppl" and any(col in h for h in history):
            ax1.plot(steps, [h.get(col, float("nan")) for h in history], marker="o", label=col.removeprefix("domain/"))
    ax1.set_title("Domain (higher is better)")
    ax1.set_xlabel("step")
    ax1.set_ylim(0, 1.02)
    ax1.legend(fontsize=8)
    cats = sorted({k for h in history for k in h if k.startswith("general/kl/")})
    ax2.plot(steps, [h.get("general/kl", float("nan")) for h in history], marker="o", color="black", linewidth=2, label="KL (all)")
    for c in cats:
        ax2.plot(steps, [h.get(c, float("nan")) for h in history], linestyle="--", alpha=0.7, label=c.removeprefix("general/kl/"))
    if budget_kl is not None:
        ax2.axhline(budget_kl, color="red", linestyle=":", label="budget")
    ax2.set_title("General drift: KL(base || tuned), nats/token (lower is better)")
    ax2.set_xlabel("step")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def history_table(history: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per evaluation) of the metrics shown in reports and the terminal."""
    cols = [c for c in GENERAL_COLS + DOMAIN_COLS if any(c in h for h in history)]
    rows = [[str(h["step"])] + [_fmt(h.get(c, "")) for c in cols] for h in history]
    return ["step"] + cols, rows


def write_report(
    path: Path,
    *,
    title: str,
    history: list[dict[str, Any]],
    summary: dict[str, Any],
    budget: BudgetConfig,
    scale_curve: list[dict[str, Any]] | None = None,
    extra_sections: list[str] | None = None,
) -> None:
    """report.md: verdict first, then per-checkpoint domain gain and general drift."""
    base = history[0] if history else {}
    lines = [f"# {title}", ""]
    lines += [f"**Verdict:** {summary.get('verdict', '')}", ""]
    sel = summary.get("selected")
    if sel:
        lines += [f"Selected checkpoint: step {sel['step']} (adapter scale {sel.get('scale', 1.0)}).", ""]
    header, rows = history_table(history)
    lines += ["## Both suites at every checkpoint", "", "Step 0 is the base model (adapter off).", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Change against the base", ""]
    keys = [c for c in DOMAIN_COLS + GENERAL_COLS if c in base]
    lines += ["| step | " + " | ".join(f"Δ {k}" for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for h in history[1:]:
        lines.append(f"| {h['step']} | " + " | ".join(f"{h.get(k, float('nan')) - base[k]:+.3f}" for k in keys) + " |")
    cats = sorted(k for k in base if k.startswith("general/kl/"))
    if cats:
        lines += ["", "## General KL by category (nats/token)", "", "| step | " + " | ".join(c.removeprefix("general/kl/") for c in cats) + " |", "|" + "---|" * (len(cats) + 1)]
        for h in history:
            lines.append(f"| {h['step']} | " + " | ".join(_fmt(h.get(c, "")) for c in cats) + " |")
    if scale_curve:
        steps = sorted({c["step"] for c in scale_curve})
        lines += ["", f"## Adapter-scale calibration (checkpoint{'s' if len(steps) > 1 else ''} {', '.join(map(str, steps))})", "",
                  "Scale 0 is the base, 1 the trained adapter.", ""]
        keys = [c for c in GENERAL_COLS + DOMAIN_COLS if c in scale_curve[0]]
        lines += ["| step | scale | " + " | ".join(keys) + " | budget |", "|" + "---|" * (len(keys) + 3)]
        for c in sorted(scale_curve, key=lambda c: (c["step"], c["scale"])):
            lines.append(f"| {c['step']} | {c['scale']} | " + " | ".join(_fmt(c.get(k, "")) for k in keys) + f" | {judge(budget, c).describe()} |")
    for sec in extra_sections or []:
        lines += ["", sec]
    lines += ["", "![curves](curves.png)", ""]
    atomic_write_text(path, "\n".join(lines))


# The terminal shows the columns that decide a run, each with a short two-line header, so the
# table fits 80 columns; report.md and report.html keep every column.
TERMINAL_COLS = {
    "general/kl": "general\nKL", "general/knowledge_mc": "general\nknow MC", "domain/qa_recall": "domain\nQA recall",
    "domain/qa_f1": "domain\nQA F1", "domain/mc_acc": "domain\nMC", "domain/ppl": "domain\nppl",
}  # fmt: skip


def print_table(console: Console, history: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """The per-checkpoint table of the deciding columns of both suites, then the verdict."""
    from rich.table import Table

    cols = [c for c in TERMINAL_COLS if any(c in h for h in history)]
    table = Table(title="Both suites at every checkpoint (step 0 = base)")
    table.add_column("step", justify="right")
    for c in cols:
        table.add_column(TERMINAL_COLS[c], justify="right")
    for h in history:
        table.add_row(str(h["step"]), *(_fmt(h.get(c, "")) for c in cols))
    console.print(table)
    console.print(f"[bold]verdict:[/] {summary['verdict']}")
