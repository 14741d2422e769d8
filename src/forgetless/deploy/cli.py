"""``forgetless bench``, ``forgetless quantize`` and ``forgetless report-html``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import ForgetlessError

out = Console()
err = Console(stderr=True)


def _int_list(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ForgetlessError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ForgetlessError(f"{what}: expected positive integers, got {text!r}")
    return vals


def bench_table(result: dict) -> Table:
    """The bench result as a Rich table: one row per variant and concurrency."""
    t = Table(title=f"bench {result['target']} ({result['settings']['device']}, {result['settings']['max_new_tokens']} new tokens)")
    for c in ("variant", "conc.", "TTFT ms", "ms/token", "tokens/s", "peak RSS MB", "load s"):
        t.add_column(c, justify="right" if c != "variant" else "left")
    for r in result["results"]:
        if "skipped" in r:
            t.add_row(r["variant"], "-", "-", "-", "-", "-", "-", end_section=True)
            t.add_row("", f"[dim]skipped: {r['skipped']}[/]", "", "", "", "", "", end_section=True)
            continue
        mem = f"{r['peak_rss_mb']:.0f}" + (f" (GPU {r['gpu_peak_mb']:.0f})" if "gpu_peak_mb" in r else "")
        for i, row in enumerate(r["rows"]):
            t.add_row(
                r["variant"] if i == 0 else "", str(row["concurrency"]), f"{row['ttft_ms']:.1f}", f"{row['tpot_ms']:.1f}",
                f"{row['tokens_per_s']:.1f}", mem if i == 0 else "", f"{r['load_s']:.2f}" if i == 0 else "",
                end_section=i == len(r["rows"]) - 1,
            )
    return t


def register(app: typer.Typer) -> None:
    """Add the deploy commands to the CLI."""

    @app.command()
    def bench(
        target: Annotated[str, typer.Argument(help="A run folder, registry:ALIAS, or a model name/folder.")],
        variants: Annotated[str, typer.Option(help="Comma-separated: base, adapter, merged, int8, nf4.")] = "base,adapter,merged,int8",
        concurrency: Annotated[str, typer.Option(help="Concurrent requests (batched), comma-separated.")] = "1,4,8",
        max_new_tokens: Annotated[int, typer.Option(min=2, help="Tokens generated per request.")] = 32,
        repeats: Annotated[int, typer.Option(min=1, help="Runs per setting; the median is reported.")] = 3,
        device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
        threads: Annotated[int, typer.Option(min=0, help="torch CPU threads (0: torch's default).")] = 0,
        int8_backend: Annotated[str, typer.Option(help="torch (quantize_dynamic) or torchao.")] = "torch",
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write results here (default: <run>/deploy/bench.json).")] = None,
    ) -> None:
        """Time to first token, per-token latency, throughput and peak memory for each variant."""
        from .bench import default_bench_path, run_bench, save_bench
        from .variants import VARIANTS

        names = [v.strip() for v in variants.split(",") if v.strip()]
        for v in names:
            if v not in VARIANTS:
                raise ForgetlessError(f"--variants: unknown variant '{v}' (choose from {', '.join(VARIANTS)})")
        if device not in ("cpu", "cuda"):
            raise ForgetlessError(f"--device: expected cpu or cuda, got {device!r}")
        conc = _int_list(concurrency, "--concurrency")
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as prog:
            task = prog.add_task(f"bench {names[0]}", total=len(names))

            def done(v: str) -> None:
                nxt = names.index(v) + 1
                prog.update(task, advance=1, description=f"bench {names[nxt]}" if nxt < len(names) else "bench done")

            res = run_bench(
                target, names, concurrency=conc, max_new_tokens=max_new_tokens, repeats=repeats,
                device=device, threads=threads, int8_backend=int8_backend, on_variant=done,
            )
        path = json_out or default_bench_path(res["target"])
        if path is not None:
            save_bench(res, path)
        out.print(bench_table(res))
        if path is not None:
            out.print(f"JSON: {path}")
        else:
            typer.echo(json.dumps(res, indent=2))
