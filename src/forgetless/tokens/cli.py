"""``forgetless tokens analyze`` and ``forgetless tokens extend``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..artifacts import TOKENS_DIR, TOKENS_FERTILITY_JSON, TOKENS_FERTILITY_MD, TOKENS_INFO
from ..errors import ForgetlessError
from ..io import atomic_write_json, atomic_write_text
from ..model_config import DEFAULT_MODEL

tokens_app = typer.Typer(
    help="Domain vocabulary: tokenizer fertility on your data, and adding terms without changing general behaviour.",
    no_args_is_help=True,
)
console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the ``tokens`` command group to the main CLI."""
    app.add_typer(tokens_app, name="tokens")


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
    )


def _terms_or_none(terms: Optional[Path]) -> Optional[list[str]]:
    from .extend import load_terms_file

    return load_terms_file(terms) if terms is not None else None


@tokens_app.command("analyze")
def analyze_cmd(
    data: Annotated[list[Path], typer.Argument(help="Domain data: JSONL (text/messages/prompt+response), .txt/.md files or folders.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model whose tokenizer to analyse (name, hub id or folder).")] = DEFAULT_MODEL,
    general: Annotated[Optional[Path], typer.Option(help="General text to compare with (default: forgetless' 40-text sample).")] = None,
    out: Annotated[Optional[Path], typer.Option(help=f"Run folder: writes {TOKENS_DIR}/{TOKENS_FERTILITY_JSON} and .md there.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many top domain terms to list and add for the saving.")] = 20,
    terms: Annotated[Optional[Path], typer.Option(help="Use these terms (JSON list or one a line) instead of picking them.")] = None,
    min_count: Annotated[int, typer.Option(min=1, help="Ignore words seen fewer times.")] = 2,
    min_pieces: Annotated[int, typer.Option(min=2, help="Ignore words split into fewer pieces.")] = 3,
) -> None:
    """Fertility (tokens per word) on domain vs general text, the worst-split domain terms, and the saving from adding them."""
    from ..models import load_tokenizer
    from .analyze import analyze, general_sample_path, load_texts, show_split, to_markdown

    domain = load_texts(data)
    gen = load_texts([general or general_sample_path()])
    chosen = _terms_or_none(terms)
    with console.status("tokenizing"):
        tok = load_tokenizer(model)
        report = analyze(tok, domain, gen, top_k=top_k, min_count=min_count, min_pieces=min_pieces, terms=chosen)
    report["model"] = model
    _print_report(report, show_split)
    if out is not None:
        folder = out / TOKENS_DIR
        atomic_write_json(folder / TOKENS_FERTILITY_JSON, report)
        atomic_write_text(folder / TOKENS_FERTILITY_MD, to_markdown(report))
        console.print(f"wrote {folder / TOKENS_FERTILITY_JSON} and {folder / TOKENS_FERTILITY_MD}")


def _print_report(report: dict[str, Any], show_split: Any) -> None:
    d, g, w = report["domain"], report["general"], report["with_terms"]
    t = Table(title=f"Tokenizer fertility ({report['model']})")
    for col in ("corpus", "words", "tokens/word", ">= 2 pieces", ">= 4 pieces", "sequence tokens"):
        t.add_column(col, justify="left" if col == "corpus" else "right")
    t.add_row("domain", str(d["words"]), f"{d['fertility']:.3f}", f"{d['share_ge2']:.1%}", f"{d['share_ge4']:.1%}", str(d["seq_tokens"]))
    t.add_row("general", str(g["words"]), f"{g['fertility']:.3f}", f"{g['share_ge2']:.1%}", f"{g['share_ge4']:.1%}", str(g["seq_tokens"]))
    wd = w["domain"]
    t.add_row(
        f"domain + {w['terms']} terms", str(wd["words"]), f"{wd['fertility']:.3f}", f"{wd['share_ge2']:.1%}",
        f"{wd['share_ge4']:.1%}", str(wd["seq_tokens"]),
    )
    print_to = Console()
    print_to.print(t)
    tt = Table(title="Top domain terms (tokens saved = count x (pieces - 1))")
    for col in ("term", "count", "pieces", "split", "saved"):
        tt.add_column(col, justify="left" if col in ("term", "split") else "right")
    for row in report["top_terms"]:
        tt.add_row(row["term"], str(row["count"]), str(row["pieces"]), show_split(row["split"]), str(row["tokens_saved"]))
    print_to.print(tt)
    print_to.print(
        f"Adding {w['terms']} terms ({w['new_tokens']} tokens) saves {w['domain_tokens_saved']} domain tokens "
        f"({w['domain_saving']:.1%}); term fertility {w['term_fertility_before']:.2f} -> {w['term_fertility_after']:.2f}."
    )


@tokens_app.command("extend")
def extend_cmd(
    data: Annotated[Optional[list[Path]], typer.Argument(help="Domain data to pick terms from (not needed with --terms).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the extended base model (a model folder any --model accepts).")] = Path("extended"),
    model: Annotated[str, typer.Option("--model", "-m", help="Base model (name, hub id or folder).")] = DEFAULT_MODEL,
    terms: Annotated[Optional[Path], typer.Option(help="Terms to add (JSON list or one a line) instead of picking them from DATA.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Terms to pick from DATA.")] = 64,
    min_count: Annotated[int, typer.Option(min=1)] = 2,
    min_pieces: Annotated[int, typer.Option(min=2)] = 3,
    init: Annotated[str, typer.Option(help="'pieces' (mean of the term's old pieces) or 'mean' (mean of all rows, Hewitt).")] = "pieces",
    general: Annotated[Optional[Path], typer.Option(help="General text for the step-0 checks (default: forgetless' sample).")] = None,
    check: Annotated[bool, typer.Option(help="Measure the step-0 guarantees (ids unchanged, KL within bound) on general text.")] = True,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
) -> None:
    """Add domain terms as tokens, initialise their rows, and save the extended base (+ tokens.json)."""
    import copy

    from ..models import load_model, load_tokenizer
    from .analyze import general_sample_path, load_texts
    from .checks import step0_report
    from .extend import extend_vocabulary, select_terms

    if init not in ("pieces", "mean"):
        raise ForgetlessError(f"--init must be 'pieces' or 'mean', got {init!r}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ForgetlessError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    chosen = _terms_or_none(terms)
    if chosen is None:
        if not data:
            raise ForgetlessError("give DATA to pick terms from, or --terms FILE")
        tok0 = load_tokenizer(model)
        chosen = select_terms(tok0, load_texts(data), top_k, min_count=min_count, min_pieces=min_pieces)
        if not chosen:
            raise ForgetlessError(f"no word in the data occurs >= {min_count} times and splits into >= {min_pieces} pieces")
    gen = load_texts([general or general_sample_path()]) if check else []
    with _progress() as prog:
        task = prog.add_task("loading model", total=3 if check else 2)
        base_tok = load_tokenizer(model)
        base = load_model(model, dtype=dtype)
        tok = copy.deepcopy(base_tok)
        ext = copy.deepcopy(base) if check else base
        prog.update(task, advance=1, description=f"adding {len(chosen)} terms")
        result = extend_vocabulary(ext, tok, chosen, init=init)  # type: ignore[arg-type]
        info: dict[str, Any] = {"base_model": model, **result.to_json()}
        if check:
            prog.update(task, advance=1, description="step-0 checks on general text")
            info["step0"] = step0_report(base, ext, base_tok, tok, gen, k=result.k)
        prog.update(task, advance=1, description="saving")
        _save_model_folder(ext, tok, out, info)
    console.print(f"added {result.k} tokens for {len(chosen)} terms (skipped {len(result.skipped)} forms already one token) -> {out}")
    if check:
        s = info["step0"]
        console.print(
            f"step 0 on {s['texts']} general texts: ids unchanged in {s['texts_ids_unchanged']}; "
            f"KL mean {s['kl_mean']:.2e}, p99 {s['kl_p99']:.2e}, max {s['kl_max']:.2e} nats; "
            f"bound log(1+k/V) = {s['bound']:.2e}"
        )


def _save_model_folder(model: Any, tok: Any, out: Path, info: dict[str, Any]) -> None:
    """Save model + tokenizer + tokens.json into ``out`` atomically (temp folder, then rename)."""
    import os
    import shutil
    import tempfile

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and any(out.iterdir()):
        raise ForgetlessError(f"{out} exists and is not empty; choose another --out")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / TOKENS_INFO, info)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
