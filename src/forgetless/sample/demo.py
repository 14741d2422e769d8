"""``forgetless demo``: plain fine-tuning next to the forgetless defaults with a budget.

Both arms train the embedded model on the sample domain with the same data, steps and LoRA recipe
(``demo.yaml``, shipped inside the package); they differ only in the forgetting controls. The demo
prints one side-by-side table (domain gain, general drift, general accuracy, verdict per arm) and
writes a picture of both arms' checkpoints in the trade-off plane.

The sample data is generated, seeded and byte-identical to ``examples/data/pharma``, into the user
cache once, so the demo runs the same from a source checkout and from an installed wheel.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .. import artifacts as A
from ..cache import cache_dir
from ..config import RunConfig, load_config
from . import generate

DEMO_CONFIG = "demo.yaml"
BUDGET_KL = 0.05  # nats/token: the drift a user accepts, the one thing the forgetless arm states
_SEED = 0

# Each arm: the overrides on top of demo.yaml. Everything they touch is a forgetting control.
ARMS: dict[str, list[str]] = {
    "plain LoRA": ["train.replay_ratio=0", "train.scale_sweep=[]"],
    "forgetless": [f"budget.general_kl={BUDGET_KL}"],
}
FORGETTING_CONTROLS = ("train.replay_ratio", "train.kl_to_base", "train.scale_sweep", "train.l2sp", "train.ewc", "budget.general_kl")


def demo_folder() -> Path:
    """A folder holding the demo config and, under data/pharma, the sample domain (made once, atomically)."""
    root = cache_dir("sample") / f"pharma-seed{_SEED}"
    if not (root / DEMO_CONFIG).exists():
        tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
        generate.write(tmp / "data" / "pharma", seed=_SEED)
        (tmp / DEMO_CONFIG).write_text(resources.files(__package__).joinpath(DEMO_CONFIG).read_text(encoding="utf-8"), encoding="utf-8")
        try:
            tmp.rename(root)
        except OSError:  # another process made it first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def arm_configs(out: Path, overrides: list[str] | None = None) -> dict[str, RunConfig]:
    """Each arm's run config, written under ``out/<arm>``; ``overrides`` apply to both arms."""
    cfg_path = demo_folder() / DEMO_CONFIG
    return {
        arm: load_config(cfg_path, [*extra, *(overrides or []), f"run_dir={out / arm.replace(' ', '-')}"])
        for arm, extra in ARMS.items()
    }


def run_demo(overrides: list[str] | None = None, *, out: Path | None = None, console: Console | None = None) -> dict[str, dict[str, Any]]:
    """Run both arms, print the comparison and write the picture; returns each arm's summary."""
    from ..pipeline import run_pipeline

    console = console or Console(stderr=True)
    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    configs = arm_configs(out, overrides)
    summaries = {}
    for arm, cfg in configs.items():
        console.rule(f"[bold]{arm}[/]")
        summaries[arm] = run_pipeline(cfg, console=console)
    histories = {arm: _history(cfg.run_dir) for arm, cfg in configs.items()}
    plot_comparison(summaries, histories, out / A.DEMO_COMPARISON_PNG, budget_kl=BUDGET_KL)
    console.rule("[bold]same data, same steps[/]")
    console.print(comparison_table(summaries))
    for arm, s in summaries.items():
        console.print(f"[bold]{arm}:[/] {s['verdict']}")
    console.print(f"runs and picture: {out} ({A.DEMO_COMPARISON_PNG})")
    return summaries


def _history(run_dir: Path) -> list[dict[str, Any]]:
    from ..runfolder import read_run_folder

    return read_run_folder(run_dir).metrics()


def _chosen(summary: dict[str, Any]) -> dict[str, Any]:
    """The metrics of what the arm exported (the base itself when it kept the base)."""
    sel = summary.get("selected")
    return sel["metrics"] if sel else summary["base"]


def _change(base: dict[str, Any], chosen: dict[str, Any], key: str) -> str:
    if key not in base or key not in chosen:
        return "-"
    return f"{base[key]:.2f}->{chosen[key]:.2f}"


def comparison_table(summaries: dict[str, dict[str, Any]]) -> Table:
    """One row per arm: domain gain, general drift and accuracy of what it exported, and what it exported."""
    t = Table(title="plain fine-tuning vs forgetless (held-out questions)")
    t.add_column("arm")
    for name in ("domain\nQA recall", "general\nKL", "general\nknow MC", "exported"):
        t.add_column(name, justify="right")
    for arm, s in summaries.items():
        base, chosen = s["base"], _chosen(s)
        sel = s.get("selected")
        where = "base kept" if not sel else f"step {sel['step']}" + (f" x{sel['scale']:g}" if sel.get("scale", 1.0) != 1.0 else "")
        t.add_row(arm, _change(base, chosen, "domain/qa_recall"), f"{chosen.get('general/kl', float('nan')):.3f}", _change(base, chosen, "general/knowledge_mc"), where)
    return t


def plot_comparison(summaries: dict[str, dict[str, Any]], histories: dict[str, list[dict[str, Any]]], path: Path, *, budget_kl: float) -> None:
    """Both arms' checkpoints in the trade-off plane: general KL (x) against domain QA recall (y)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (arm, hist), color in zip(histories.items(), ("tab:red", "tab:blue")):
        xs, ys = [h.get("general/kl", float("nan")) for h in hist], [h.get("domain/qa_recall", float("nan")) for h in hist]
        ax.plot(xs, ys, marker="o", color=color, alpha=0.6, label=f"{arm}: checkpoints (step 0 = base)")
        chosen = _chosen(summaries[arm])
        ax.scatter([chosen.get("general/kl")], [chosen.get("domain/qa_recall")], marker="*", s=250, color=color, zorder=5, label=f"{arm}: exported")
    ax.axvline(budget_kl, color="gray", linestyle="--", label=f"budget {budget_kl:g} nats/token")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("general drift: KL(base || tuned), nats/token (lower is better)")
    ax.set_ylabel("domain: held-out QA recall (higher is better)")
    ax.set_title("Same data, same steps: what each arm learned and what it forgot")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
