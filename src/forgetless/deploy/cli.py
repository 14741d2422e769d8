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
from .int8_schemes import BENCH_INT8_SCHEME, DEFAULT_INT8_SCHEME, INT8_SCHEMES

SCHEMES_HELP = ", ".join(INT8_SCHEMES)

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
    skipped = []
    for r in result["results"]:
        if "skipped" in r:
            t.add_row(r["variant"], "-", "-", "-", "-", "-", "-", end_section=True)
            skipped.append(f"{r['variant']} skipped: {r['skipped']}")
            continue
        mem = f"{r['peak_rss_mb']:.0f}" + (f" (GPU {r['gpu_peak_mb']:.0f})" if "gpu_peak_mb" in r else "")
        for i, row in enumerate(r["rows"]):
            t.add_row(
                r["variant"] if i == 0 else "", str(row["concurrency"]), f"{row['ttft_ms']:.1f}", f"{row['tpot_ms']:.1f}",
                f"{row['tokens_per_s']:.1f}", mem if i == 0 else "", f"{r['load_s']:.2f}" if i == 0 else "",
                end_section=i == len(r["rows"]) - 1,
            )
    if skipped:
        t.caption = "\n".join(skipped)
    return t


# A run trained with model.trust_remote_code runs the model's own code when loaded: never by default.
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow loading a run whose model needs its own code (model.trust_remote_code).")]


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
        int8_scheme: Annotated[str, typer.Option(help=f"int8 scheme timed: {SCHEMES_HELP} (default: weight-only-bf16, the scheme `quantize` gates).")] = BENCH_INT8_SCHEME,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write results here (default: <run>/deploy/bench.json).")] = None,
        trust_remote_code: TrustOpt = False,
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
                device=device, threads=threads, int8_backend=int8_backend, int8_scheme=int8_scheme, on_variant=done,
                trust_remote_code=trust_remote_code,
            )
        path = json_out or default_bench_path(res["target"])
        if path is not None:
            save_bench(res, path)
        out.print(bench_table(res))
        if path is not None:
            out.print(f"JSON: {path}")
        else:
            typer.echo(json.dumps(res, indent=2))

    @app.command()
    def quantize(
        run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
        backend: Annotated[str, typer.Option(help="torch (quantize_dynamic) or torchao.")] = "torch",
        scheme: Annotated[str, typer.Option(help=f"int8 scheme gated: {SCHEMES_HELP} (default: weight-only-bf16: int8 weights, bf16 activations; weight-only keeps fp32 activations for CPUs without fast bf16).")] = DEFAULT_INT8_SCHEME,
        max_kl_increase: Annotated[float, typer.Option(min=0, help="Most the general KL to base may rise over fp32 (nats/token).")] = 0.01,
        max_domain_drop: Annotated[float, typer.Option(min=0, help="Most the primary domain metric may fall below fp32.")] = 0.02,
        general_limit: Annotated[Optional[int], typer.Option(min=0, help="General prompts to use (default: the run's eval.general_limit).")] = None,
        domain_limit: Annotated[int, typer.Option(min=0, help="Domain QA/MC items to use (0: all).")] = 0,
        trust_remote_code: TrustOpt = False,
    ) -> None:
        """int8-quantize a run's merged model and gate it on both suites against fp32; exit 2 if refused."""
        from .quantize import quant_info_path, quantize_and_gate

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err) as prog:
            task = prog.add_task("loading", total=None)
            res = quantize_and_gate(
                run_dir, backend=backend, scheme=scheme, max_kl_increase=max_kl_increase, max_domain_drop=max_domain_drop,
                general_limit=general_limit, domain_limit=domain_limit, allow_remote_code=trust_remote_code,
                progress=lambda d: prog.update(task, description=d),
            )  # fmt: skip
        t = Table(title=f"int8 ({backend}, {scheme}) vs fp32: {run_dir}")
        for c in ("metric", "fp32", "int8", "change"):
            t.add_column(c, justify="left" if c == "metric" else "right")
        g = res.general
        t.add_row("general/kl (to base)", f"{g['kl_fp32']:.4f}", f"{g['kl_int8']:.4f}", f"{g['kl_increase']:+.4f}")
        t.add_row("general/nll", f"{g['nll_fp32']:.4f}", f"{g['nll_int8']:.4f}", f"{g['nll_int8'] - g['nll_fp32']:+.4f}")
        for k, v in res.domain["fp32"].items():
            w = res.domain["int8"].get(k, float("nan"))
            t.add_row(k, f"{v:.4f}", f"{w:.4f}", f"{w - v:+.4f}")
        out.print(t)
        out.print(f"verdict written to {quant_info_path(Path(run_dir).resolve())}")
        if not res.passed:
            raise ForgetlessError("int8 refused by the quality gate:\n  " + "\n  ".join(res.reasons))
        out.print("[green]int8 passes the quality gate[/]")

    @app.command()
    def export(
        run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
        fmt: Annotated[str, typer.Option("--format", help="Output format (gguf: llama.cpp / Ollama).")] = "gguf",
        types: Annotated[str, typer.Option(help="Comma-separated GGUF types: f16, q8_0, q4_0.")] = "f16,q8_0,q4_0",
        max_kl_increase: Annotated[float, typer.Option(min=0, help="Most the general KL to base may rise over fp32 (nats/token).")] = 0.01,
        max_domain_drop: Annotated[float, typer.Option(min=0, help="Most the primary domain metric may fall below fp32.")] = 0.02,
        general_limit: Annotated[Optional[int], typer.Option(min=0, help="General prompts to use (default: the run's eval.general_limit).")] = None,
        domain_limit: Annotated[int, typer.Option(min=0, help="Domain QA/MC items to use (0: all).")] = 0,
        trust_remote_code: TrustOpt = False,
    ) -> None:
        """Write the merged model (adapter at its selected scale) as GGUF files, each gated against fp32; exit 2 if any is refused."""
        from .export import export_gguf, gguf_dir, gguf_info_path

        if fmt != "gguf":
            raise ForgetlessError(f"--format: unknown format {fmt!r} (supported: gguf)")
        names = [x.strip() for x in types.split(",") if x.strip()]
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err) as prog:
            task = prog.add_task("loading", total=None)
            info = export_gguf(
                run_dir, names, max_kl_increase=max_kl_increase, max_domain_drop=max_domain_drop,
                general_limit=general_limit, domain_limit=domain_limit, progress=lambda d: prog.update(task, description=d),
                allow_remote_code=trust_remote_code,
            )  # fmt: skip
        metric = next((f["primary_metric"] for f in info["files"].values() if f.get("primary_metric")), None)
        t = Table(title=f"GGUF vs fp32: {run_dir}")
        for c in ("file", "MB", "general/kl", "KL increase", metric or "domain", "gate"):
            t.add_column(c, justify="left" if c in ("file", "gate") else "right")

        def dom(d: dict) -> str:
            return f"{d[metric]:.4f}" if metric in d else "-"

        t.add_row("fp32 (merged)", "", f"{info['fp32']['general']['kl']:.4f}", "", dom(info["fp32"]["domain"]), "")
        refused = []
        for ft in names:
            f = info["files"][ft]
            t.add_row(
                f["file"], f"{f['bytes'] / 2**20:.1f}", f"{f['general']['kl']:.4f}", f"{f['general']['kl_increase']:+.4f}",
                dom(f["domain"]), f["verdict"],
            )  # fmt: skip
            if f["verdict"] != "pass":
                refused.append(f"{ft}: " + "; ".join(f["reasons"]))
        out.print(t)
        out.print(f"files in {gguf_dir(Path(run_dir).resolve())}; verdicts in {gguf_info_path(Path(run_dir).resolve()).name}")
        if refused:
            raise ForgetlessError("refused by the quality gate:\n  " + "\n  ".join(refused))
        out.print("[green]every GGUF file passes the quality gate[/]")

    @app.command("html-report")
    def html_report(
        run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
        out_path: Annotated[Optional[Path], typer.Option("--out", help="Where to write (default: <run>/report.html).")] = None,
    ) -> None:
        """Write a self-contained HTML report: curves, tables, budget verdict, router calibration, bench, int8 gate."""
        from .report_html import write_report

        with err.status("rendering report"):
            path = write_report(run_dir, out_path)
        out.print(f"report: {path}")
