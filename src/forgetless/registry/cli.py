"""``forgetless registry register|list|show|promote|rollback|diff``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .store import Registry
from .version import Version

DbOpt = Annotated[Optional[Path], typer.Option("--db", help="Registry database (default: $FORGETLESS_REGISTRY or the user cache).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

out = Console()


def _verdict(ok: bool) -> str:
    return "[green]pass[/]" if ok else "[red]fail[/]"


def _general(v: Version) -> str:
    """The general suite's verdict; a run with no budget set shows that, not a pass or a fail."""
    return "[yellow]no budget[/]" if v.budget_state == "unset" else _verdict(v.general_pass)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _show(v: Version, aliases: list[str]) -> None:
    t = Table(title=f"{v.ref}" + (f"  ({', '.join(aliases)})" if aliases else ""), show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    for f in ("run_dir", "base_model", "base_sha256", "tokenizer_sha256", "data_sha256", "config_sha256", "adapter_sha256", "code_version", "selected_step", "created_at"):
        t.add_row(f, str(getattr(v, f)))
    t.add_row("kind", v.kind)
    if v.source:
        t.add_row("source run", v.source)
    if v.artifact:
        t.add_row("artifact", f"{v.artifact} (sha256 {v.artifact_sha256})")
    if v.kind not in ("run", "distill"):
        t.add_row(f"{v.kind} gate", _verdict(v.gate_pass))
    t.add_row("budget general_kl", _fmt(v.budget_general_kl))
    t.add_row("domain suite", _verdict(v.domain_pass))
    t.add_row("general suite", _general(v))
    for r in v.reasons:
        t.add_row("reason", r)
    out.print(t)
    s = Table(title="scores (selected step vs base)")
    for c in ("metric", "base", "selected", "delta"):
        s.add_column(c)
    for k in sorted(v.scores):
        b = v.base_scores.get(k)
        s.add_row(k, _fmt(b), _fmt(v.scores[k]), _fmt(v.scores[k] - b) if b is not None else "-")
    out.print(s)


def register(app: typer.Typer) -> None:
    """Add the ``registry`` command group to the CLI."""
    reg = typer.Typer(help="Versioned models with lineage; aliases such as prod and staging.", no_args_is_help=True)
    app.add_typer(reg, name="registry")

    @reg.command("register")
    def register_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
        name: Annotated[str, typer.Option("--name", "-n", help="Model name (letters, digits, . _ -).")],
        variant: Annotated[Optional[str], typer.Option(help="Register a gated deployment variant of the run: int8, gguf-f16, gguf-q8_0 or gguf-q4_0.")] = None,
        db: DbOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Register a run folder (or a variant of it) as the next version of NAME (lineage hashes, both suites' scores, verdict)."""
        v, created = Registry(db).register(run_dir, name, variant=variant)
        if as_json:
            typer.echo(json.dumps(v.as_dict(), indent=2))
            return
        what = "registered" if created else "already registered as"
        gate = f"  {v.kind} gate {_verdict(v.gate_pass)}" if v.kind not in ("run", "distill") else ""
        out.print(f"{what} [bold]{v.ref}[/] ({v.kind})  domain {_verdict(v.domain_pass)}  general {_general(v)}{gate}")

    @reg.command("list")
    def list_cmd(
        name: Annotated[Optional[str], typer.Argument(help="Only this model name.")] = None,
        db: DbOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """List versions with their verdicts and the aliases pointing at them."""
        r = Registry(db)
        versions, aliases = r.versions(name), r.aliases()
        by_ref: dict[str, list[str]] = {}
        for a, ref in aliases.items():
            by_ref.setdefault(ref, []).append(a)
        if as_json:
            typer.echo(json.dumps([{**v.as_dict(), "aliases": by_ref.get(v.ref, [])} for v in versions], indent=2))
            return
        t = Table(title=f"registry {r.path}")
        for c in ("version", "kind", "aliases", "domain", "general", "gate", "general/kl", "budget", "base", "created"):
            t.add_column(c)
        for v in versions:
            t.add_row(
                v.ref, v.kind, ", ".join(by_ref.get(v.ref, [])), _verdict(v.domain_pass), _general(v),
                _verdict(v.gate_pass) if v.kind not in ("run", "distill") else "-",
                _fmt(v.scores.get("general/kl")), _fmt(v.budget_general_kl), v.base_model, v.created_at,
            )
        out.print(t)

    @reg.command("show")
    def show_cmd(
        ref: Annotated[str, typer.Argument(help="name:version, name (latest) or an alias.")],
        db: DbOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Show one version's lineage, scores and verdict."""
        r = Registry(db)
        v = r.get(ref)
        aliases = [a for a, target in r.aliases().items() if target == v.ref]
        if as_json:
            typer.echo(json.dumps({**v.as_dict(), "aliases": aliases}, indent=2))
        else:
            _show(v, aliases)

    @reg.command("promote")
    def promote_cmd(
        ref: Annotated[str, typer.Argument(help="name:version to promote.")],
        alias: Annotated[str, typer.Option("--alias", "-a", help="Alias to point at it.")] = "prod",
        allow_no_budget: Annotated[bool, typer.Option("--allow-no-budget", help="Promote a run that set no forgetting budget (its domain suite must still pass).")] = False,
        db: DbOpt = None,
    ) -> None:
        """Point ALIAS at a version; refused unless both suites passed."""
        v = Registry(db).promote(ref, alias, allow_no_budget=allow_no_budget)
        out.print(f"[bold]{alias}[/] -> {v.ref}")

    @reg.command("rollback")
    def rollback_cmd(
        alias: Annotated[str, typer.Argument(help="Alias to roll back.")] = "prod",
        db: DbOpt = None,
    ) -> None:
        """Point ALIAS back at the version it had before its latest promotion."""
        v = Registry(db).rollback(alias)
        out.print(f"[bold]{alias}[/] -> {v.ref} (rolled back)")

    @reg.command("diff")
    def diff_cmd(
        a: Annotated[str, typer.Argument(help="First version (name:version or alias).")],
        b: Annotated[str, typer.Argument(help="Second version.")],
        db: DbOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """What differs between two versions: lineage hashes, scores and verdicts."""
        d = Registry(db).diff(a, b)
        if as_json:
            typer.echo(json.dumps(d, indent=2))
            return
        t = Table(title=f"{d['a']} -> {d['b']}")
        for c in ("field", d["a"], d["b"], "delta"):
            t.add_column(c, overflow="fold")
        for f, (x, y) in d["lineage"].items():
            t.add_row(f, str(x), str(y), "")
        for f, (x, y) in d["verdict"].items():
            t.add_row(f"{f} suite", _verdict(x), _verdict(y), "")
        for k, s in d["scores"].items():
            t.add_row(k, _fmt(s["a"]), _fmt(s["b"]), _fmt(s["delta"]))
        if not (d["lineage"] or d["verdict"] or d["scores"]):
            out.print("identical lineage, scores and verdicts")
        else:
            out.print(t)
