"""The ``forgetless`` command line.

Each stage folder contributes its own commands (``curate``, ``tokens``, ``eval``, ``serve``, ...);
this module only wires them together and turns user errors into one clear line and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import ForgetlessError

app = typer.Typer(
    name="forgetless",
    help="Fine-tune an LLM on domain documents without catastrophic forgetting, and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


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
    """Run examples/quickstart.yaml on the embedded model (what `make demo` calls)."""
    from .config import load_config
    from .pipeline import run_pipeline

    cfg = load_config(EXAMPLES_DIR / "quickstart.yaml", overrides or [])
    run_pipeline(cfg, resume=False, console=console)


# --- stage commands (each stage owns its own cli module) ---------------------------------------
# STAGE-COMMANDS-BEGIN
from .registry.cli import register as _reg_registry; _reg_registry(app)  # noqa: E402,E702 (issue 7)
from .curate.cli import register as _reg_curate; _reg_curate(app)  # noqa: E402,E702 (issue 3)
from .tokens.cli import register as _reg_tokens; _reg_tokens(app)  # noqa: E402
from .deploy.cli import register as _reg_deploy; _reg_deploy(app)  # noqa: E402,E702 (issue 7)
from .evaluate.cli import register as _reg_evaluate; _reg_evaluate(app)  # noqa: E402,E702 (issue 4)
from .serve.cli import register as _reg_serve; _reg_serve(app)  # noqa: E402,E702 (issue 8)
from .distill import register as _reg_distill; _reg_distill(app)  # noqa: E402,E702
# STAGE-COMMANDS-END


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
