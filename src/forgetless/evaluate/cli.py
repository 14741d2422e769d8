"""``forgetless eval``: score one or more models on the general and domain suites, side by side.

Each ``--model`` is scored; each ``--adapter`` adds a column for the *first* model with that
adapter applied (the usual "base vs tuned" comparison is ``--model BASE --adapter RUN/adapter``).
Every score prints with n and its 95% bootstrap interval; every column after the first gets a
delta against the first, with the interval of the paired difference and a verdict ("dropped"
only when the whole interval is below zero).
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ForgetlessError

GENERAL, DOMAIN = "general", "domain"


@dataclass(frozen=True)
class Column:
    """One model to score: a base model name and an optional adapter folder."""

    label: str
    model: str
    adapter: Path | None = None


def parse_suites(spec: str) -> list[str]:
    """``"general,domain"`` -> ``["general", "domain"]``; unknown names are a user error."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in (GENERAL, DOMAIN)]
    if bad or not names:
        raise ForgetlessError(f"--suites: unknown suite(s) {bad or spec!r}; use general, domain or general,domain")
    return names


def build_columns(models: list[str], adapters: list[Path]) -> list[Column]:
    """The models to score, in table order (see the module docstring)."""
    if not models:
        raise ForgetlessError("give at least one --model")
    cols = [Column(m, m) for m in models]
    for a in adapters:
        if not (a / "adapter_config.json").exists():
            raise ForgetlessError(f"--adapter {a}: not a PEFT adapter folder (no adapter_config.json)")
        if not (a / "adapter_model.safetensors").exists():
            raise ForgetlessError(f"--adapter {a}: no adapter_model.safetensors (forgetless loads safetensors only)")
        cols.append(Column(f"{models[0]}+{a}", models[0], a))
    return cols


def load_column(col: Column, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load a column's model (with its adapter, if any) and tokenizer, in eval mode."""
    from ..models import load_model, load_tokenizer

    tok_source = str(col.adapter) if col.adapter and (col.adapter / "tokenizer_config.json").exists() else col.model
    tok = load_tokenizer(tok_source, trust_remote_code=trust_remote_code)
    model = load_model(col.model, trust_remote_code=trust_remote_code)
    if col.adapter is not None:
        from peft import PeftModel

        # An adapter trained with an extended vocabulary ships its tokenizer: size the base to it.
        if len(tok) != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tok))
        model = PeftModel.from_pretrained(model, str(col.adapter))
        model.eval()
    return model, tok


def domain_as_scores(model: Any, tok: Any, data: Any, *, batch_size: int) -> dict[str, Any]:
    """The lead's domain suite (``evaluate.domain``) as :class:`Score` objects with n and CI.

    Per-split scores are recomputed from the per-item values and each record's ``split``; the
    perplexity is a corpus-level number (no per-item values), so it carries n but no interval.
    """
    from .domain import domain_scores
    from .stats import Score, make_score

    metrics, items = domain_scores(model, tok, data, batch_size=batch_size)
    out: dict[str, Any] = {}
    for key, vals in items.items():
        name = key.removeprefix("domain/")
        records = data.qa if name.startswith("qa_") else data.mc
        out[name] = make_score(vals, [str(i) for i in range(len(vals))])
        splits: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            if "split" in r:
                splits.setdefault(str(r["split"]), []).append(i)
        for split, idx in sorted(splits.items()):
            out[f"{name}/{split}"] = make_score([vals[i] for i in idx], [str(i) for i in idx])
    for key in ("domain/ppl", "domain/text_ppl"):
        if key in metrics:
            n = len(data.qa) if key == "domain/ppl" else len(data.text)
            out[key.removeprefix("domain/")] = Score(float(metrics[key]), n, math.nan, math.nan)
    return out


# Lower is better for these keys; every other score is an accuracy-like "higher is better".
LOWER_IS_BETTER = ("qa_nll", "ppl", "text_ppl")


def _lower_is_better(key: str) -> bool:
    return key.split("/")[1] in LOWER_IS_BETTER if "/" in key else False


def _fmt(s: Any) -> str:
    if math.isnan(s.ci_low):
        return f"{s.value:.3f}  n={s.n}"
    return f"{s.value:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}] n={s.n}"


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command to the CLI."""

    @app.command("eval")
    def eval_cmd(
        model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="Base model: 'smollm2-135m-instruct', a folder or a hub id. Repeat to compare.")] = None,
        adapter: Annotated[Optional[list[Path]], typer.Option("--adapter", "-a", help="PEFT adapter folder, applied to the first --model (adds a column). Repeatable.")] = None,
        suites: Annotated[str, typer.Option(help="Comma-separated: general, domain.")] = "general",
        out: Annotated[Optional[Path], typer.Option(help="Folder to write eval.json into.")] = None,
        limit: Annotated[int, typer.Option(help="Only the first N items of each general suite (0: all; see also --in-loop).")] = 0,
        in_loop: Annotated[bool, typer.Option("--in-loop", help="Use the small subsets the training loop evaluates at every checkpoint.")] = False,
        batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 16,
        domain_qa: Annotated[Optional[Path], typer.Option(help="Domain QA JSONL: question, answer (optional split).")] = None,
        domain_mc: Annotated[Optional[Path], typer.Option(help="Domain multiple-choice JSONL: question, choices, answer index.")] = None,
        domain_text: Annotated[Optional[Path], typer.Option(help="Held-out domain text (JSONL/.txt/.md) for perplexity.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the JSON result instead of the table.")] = False,
        trust_remote_code: Annotated[bool, typer.Option(help="Allow models that need their own code (off by default).")] = False,
        served: Annotated[Optional[Path], typer.Option("--served", help="Run folder: score the routed system (router + adapter + base) as `forgetless serve` answers.")] = None,
    ) -> None:
        """Score models on the general suites (math, code, knowledge MC) and/or your domain files."""
        if served is not None:
            from .served import served_cli

            served_cli(served, out=out, batch_size=batch_size, as_json=as_json, allow_remote_code=trust_remote_code)
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Table

        from ..artifacts import EVAL_JSON
        from ..io import atomic_write_json
        from .stats import compare
        from .suites import IN_LOOP_LIMITS, SUITES, general_suite_scores

        wanted = parse_suites(suites)
        columns = build_columns(model or [], adapter or [])
        domain_data = None
        if DOMAIN in wanted:
            if not (domain_qa or domain_mc or domain_text):
                raise ForgetlessError("--suites domain needs at least one of --domain-qa, --domain-mc, --domain-text")
            from .domain import load_domain

            domain_data = load_domain(domain_qa, domain_mc, domain_text)  # bad files fail here, before any model loads
        limits: Any = IN_LOOP_LIMITS if in_loop else (limit or None)

        err = Console(stderr=True)
        results: dict[str, dict[str, Any]] = {}
        steps = len(columns) * ((len(SUITES) if GENERAL in wanted else 0) + (1 if DOMAIN in wanted else 0))
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as progress:
            task = progress.add_task("loading", total=steps)
            for col in columns:
                progress.update(task, description=f"{col.label}: loading")
                m, tok = load_column(col, trust_remote_code=trust_remote_code)
                scores: dict[str, Any] = {}
                if GENERAL in wanted:
                    for suite in SUITES:
                        progress.update(task, description=f"{col.label}: general/{suite}")
                        got = general_suite_scores(m, tok, limit_per_suite=limits, batch_size=batch_size, suites=[suite])
                        scores.update({f"general/{k}": v for k, v in got.items()})
                        progress.advance(task)
                if domain_data is not None:
                    progress.update(task, description=f"{col.label}: domain")
                    scores.update({f"domain/{k}": v for k, v in domain_as_scores(m, tok, domain_data, batch_size=batch_size).items()})
                    progress.advance(task)
                results[col.label] = scores
                del m
                gc.collect()

        first = columns[0].label
        keys = list(results[first])
        deltas: dict[str, dict[str, Any]] = {}
        for col in columns[1:]:
            deltas[col.label] = {
                k: compare(results[first][k], results[col.label][k], higher_is_better=not _lower_is_better(k)).to_dict()
                for k in keys
                if k in results[col.label]
            }
        payload = {
            "columns": [{"label": c.label, "model": c.model, "adapter": str(c.adapter) if c.adapter else None} for c in columns],
            "limits": limits,
            "scores": {label: {k: s.to_dict(with_values=True) for k, s in sc.items()} for label, sc in results.items()},
            "deltas_vs_first": deltas,
        }
        if out is not None:
            atomic_write_json(out / EVAL_JSON, payload)
        if as_json:
            typer.echo(json.dumps(payload, indent=2, default=str))
            return
        table = Table(title="forgetless eval (mean [95% CI] n)", show_lines=False)
        table.add_column("score")
        for col in columns:
            table.add_column(col.label, overflow="fold")
        for col in columns[1:]:
            table.add_column(f"Δ {col.label}", overflow="fold")
        for k in keys:
            row = [k] + [(_fmt(results[c.label][k]) if k in results[c.label] else "-") for c in columns]
            for col in columns[1:]:
                d = deltas[col.label].get(k)
                if d is None or math.isnan(d["ci_low"]):
                    row.append(f"{d['delta']:+.3f}" if d else "-")
                else:
                    row.append(f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] {d['verdict']}")
            table.add_row(*row)
        Console().print(table)
        if out is not None:
            err.print(f"wrote {out / EVAL_JSON}")
