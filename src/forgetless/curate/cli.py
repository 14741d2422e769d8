"""``forgetless curate INPUT... -o OUT [--config CONFIG.yaml]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add the ``curate`` command to the forgetless CLI."""

    @app.command()
    def curate(
        inputs: Annotated[
            Optional[list[Path]], typer.Argument(help="Data files or folders (JSONL text/messages/prompt+response, .txt, .md). Default: the config's data.train.")
        ] = None,
        out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: curated.jsonl, rejects.jsonl, report.md, report.json.")] = Path("curated"),
        config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Run config YAML; its curate: section and model.name are used.")] = None,
        overrides: Annotated[
            Optional[list[str]], typer.Option("--set", help="Config override, e.g. --set curate.threshold=0.7 (repeatable).")
        ] = None,
    ) -> None:
        """Clean, deduplicate and check the diversity of training data; optionally mix in replay data.

        Every input record ends up in exactly one of curated.jsonl and rejects.jsonl (with the reason,
        and for duplicates the record it duplicated); report.md says how many and why.
        """
        from ..config import load_config
        from ..errors import ForgetlessError
        from .pipeline import curate_summary_line, run_curate

        console = Console(stderr=True)
        cfg = load_config(config, overrides or [])
        ccfg = cfg.curate
        if ccfg.replay_file is not None and not ccfg.replay_file.is_absolute() and config is not None:
            # Like data paths, a replay file named in the YAML is relative to the YAML's folder.
            ccfg = ccfg.model_copy(update={"replay_file": (config.resolve().parent / ccfg.replay_file).resolve()})
        paths = list(inputs or []) or list(cfg.data.train)
        if not paths:
            raise ForgetlessError("no input: name data files or folders, or give a --config with data.train")
        result = run_curate(
            paths, out, ccfg, console=console, model_name=cfg.model.name,
            trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision,
        )
        console.print(curate_summary_line(result), highlight=False)
        for w in result.report["warnings"]:
            console.print(f"[yellow]warning:[/] {w}", highlight=False)
        console.print(f"curated: {result.kept_path}\nrejects: {result.rejects_path}\nreport:  {result.report_md_path}", highlight=False)
