"""The ``forgetless`` command line.

Each stage folder contributes its own commands (``curate``, ``tokens``, ``eval``, ``serve``, ...),
listed in :data:`STAGE_COMMANDS`; this module only wires them together and turns user errors into
one clear line and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .curate import cli as curate_cli
from .deploy import cli as deploy_cli
from .errors import ForgetlessError
from .evaluate import cli as evaluate_cli
from .registry import cli as registry_cli
from .serve import cli as serve_cli
from .tokens import cli as tokens_cli

app = typer.Typer(
    name="forgetless",
    help="Fine-tune an LLM on domain documents without catastrophic forgetting, and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last complete checkpoint in run_dir.")] = False,
) -> None:
    """Run the whole pipeline: curate, tokens, train with both suites at every checkpoint, select, report."""
    from .config import load_config
    from .pipeline import run_pipeline

    cfg = load_config(config, overrides or [])
    run_pipeline(cfg, resume=resume, console=console)


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Print the resolved config, or every error with its key path and line."""
    from .config import dump_config, load_config

    cfg = load_config(config, overrides or [])
    typer.echo(dump_config(cfg), nl=False)


@app.command()
def demo(
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.sub=value overrides.")] = None,
) -> None:
    """Plain fine-tuning next to the forgetless defaults with a budget, on the embedded model and the
    sample domain: same data, same steps (what `make demo` calls)."""
    from .sample.demo import run_demo

    run_demo(overrides or [], console=console)


# Each stage owns its commands in its own cli module; this table is the whole list.
STAGE_COMMANDS = (registry_cli.register, curate_cli.register, tokens_cli.register, deploy_cli.register, evaluate_cli.register, serve_cli.register)
for _register in STAGE_COMMANDS:
    _register(app)


def quiet_libraries() -> None:
    """Silence library progress bars and deprecation chatter: forgetless shows its own Rich progress."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one message and exit 2; bugs keep their traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        app(args=argv)
    except ForgetlessError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
