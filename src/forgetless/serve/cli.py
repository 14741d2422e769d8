"""``forgetless serve TARGET``: the OpenAI-compatible server on a run folder or a registry alias."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ForgetlessError

API_KEY_ENV = "FORGETLESS_API_KEY"


def target_resolver(target: str) -> Callable[[], Path | tuple[Path, str]]:
    """``registry:ALIAS`` -> (folder, adapter hash) re-resolved through the registry on every call; anything else -> that folder."""
    if target.startswith("registry:"):
        alias = target.removeprefix("registry:")
        if not alias:
            raise ForgetlessError("registry target needs an alias: registry:ALIAS")
        try:
            from ..registry import resolve_alias_pinned
        except ImportError:
            raise ForgetlessError("this install has no model registry (forgetless.registry.resolve_alias_pinned)") from None
        resolve_alias_pinned(alias)  # fail now, with the registry's own message, if the alias is unknown
        return lambda: resolve_alias_pinned(alias)
    path = Path(target).expanduser().resolve()
    return lambda: path


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the CLI."""

    @app.command()
    def serve(
        target: Annotated[str, typer.Argument(help="Run folder, or registry:ALIAS (re-resolved while serving: promote/rollback hot-swap).")],
        host: Annotated[str, typer.Option(help="Address to bind. Keep 127.0.0.1 unless a proxy with TLS sits in front.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
        api_key: Annotated[Optional[str], typer.Option(help=f"Bearer key clients must send (default: ${API_KEY_ENV}, else a random one, printed).")] = None,
        max_tokens_limit: Annotated[int, typer.Option(help="Most tokens a request may generate.")] = 512,
        max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt accepted, in tokens.")] = 2048,
        max_batch: Annotated[int, typer.Option(help="Most requests decoded together in one micro-batch.")] = 32,
        reload_interval: Annotated[float, typer.Option(help="Seconds between checks of the target for a new version.")] = 2.0,
        max_queue_wait: Annotated[float, typer.Option(help="Seconds a request may wait for the model before a 503 + Retry-After.")] = 30.0,
        model_prefix: Annotated[str, typer.Option(help="Served model ids: PREFIX-auto, PREFIX-adapter, PREFIX-base.")] = "forgetless",
        trust_remote_code: Annotated[bool, typer.Option(help="Allow a run whose base model needs its own code.")] = False,
    ) -> None:
        """Serve a run over an OpenAI-compatible API; PREFIX-auto routes out-of-domain queries to the base."""
        import logging

        import uvicorn

        from .app import ServeSettings, create_app
        from .deployment import Deployment, EngineSettings
        from .metrics import ServeMetrics

        key = api_key or os.environ.get(API_KEY_ENV)
        if not key:
            key = secrets.token_urlsafe(24)
            typer.echo(f"API key (pass --api-key or ${API_KEY_ENV} to choose one): {key}", err=True)
        if max_tokens_limit < 1 or max_prompt_tokens < 1 or max_batch < 1 or reload_interval <= 0 or max_queue_wait <= 0:
            raise ForgetlessError("--max-tokens-limit, --max-prompt-tokens, --max-batch, --reload-interval and --max-queue-wait must be positive")
        resolve = target_resolver(target)
        settings = ServeSettings(
            api_key=key, model_prefix=model_prefix, max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit,
            default_max_tokens=min(256, max_tokens_limit), max_queue_wait_s=max_queue_wait,
            engine=EngineSettings(max_batch=max_batch, reload_interval_s=reload_interval, trust_remote_code=trust_remote_code),
        )  # fmt: skip
        logging.getLogger("forgetless.serve").setLevel(logging.INFO)
        # Load before binding: a bad run folder is one clear error line, not a server that 500s.
        from rich.console import Console

        with Console(stderr=True).status(f"loading {target}"):
            dep = Deployment(resolve, ServeMetrics(), settings.engine)
        typer.echo(f"serving {dep.spec.run_dir} on http://{host}:{port}/v1 as {', '.join(settings.model_ids())}", err=True)
        uvicorn.run(create_app(resolve, settings, deployment=dep), host=host, port=port, log_level="info")
