"""``forgetless serve TARGET``: the OpenAI-compatible server on a run folder or a registry alias."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ForgetlessError
from .variant import Pin

API_KEY_ENV = "FORGETLESS_API_KEY"


def target_resolver(target: str) -> Callable[[], Path | Pin]:
    """``registry:ALIAS`` -> the version it points at (:class:`~.variant.Pin`: run folder, kind, artifact,
    hashes), re-resolved through the registry on every call; anything else -> that folder."""
    if target.startswith("registry:"):
        alias = target.removeprefix("registry:")
        if not alias:
            raise ForgetlessError("registry target needs an alias: registry:ALIAS")
        try:
            from ..registry import resolve_alias_version
        except ImportError:
            raise ForgetlessError("this install has no model registry (forgetless.registry.resolve_alias_version)") from None

        def resolve() -> Pin:
            v = resolve_alias_version(alias)
            return Pin(Path(v.run_dir), v.adapter_sha256, kind=v.kind, artifact=Path(v.artifact) if v.artifact else None,
                       artifact_sha256=v.artifact_sha256, ref=v.ref)  # fmt: skip

        resolve()  # fail now, with the registry's own message, if the alias is unknown
        return resolve
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
        monitor_sample_rate: Annotated[float, typer.Option(help="Share of adapter answers scored in the background for KL to the base (0: off).")] = 0.03,
        kl_alert: Annotated[Optional[float], typer.Option(help="Drift alert threshold (per-token KL); default: the run's budget.general_kl.")] = None,
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
        if not 0.0 <= monitor_sample_rate <= 1.0:
            raise ForgetlessError(f"--monitor-sample-rate must be in [0, 1], got {monitor_sample_rate}")
        if max_tokens_limit < 1 or max_prompt_tokens < 1 or max_batch < 1 or reload_interval <= 0 or max_queue_wait <= 0:
            raise ForgetlessError("--max-tokens-limit, --max-prompt-tokens, --max-batch, --reload-interval and --max-queue-wait must be positive")
        resolve = target_resolver(target)
        settings = ServeSettings(
            api_key=key, model_prefix=model_prefix, max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit,
            default_max_tokens=min(256, max_tokens_limit), max_queue_wait_s=max_queue_wait,
            engine=EngineSettings(max_batch=max_batch, reload_interval_s=reload_interval, trust_remote_code=trust_remote_code,
                                  monitor_sample_rate=monitor_sample_rate, kl_alert=kl_alert),
        )  # fmt: skip
        logging.getLogger("forgetless.serve").setLevel(logging.INFO)
        # Load before binding: a bad run folder is one clear error line, not a server that 500s.
        from rich.console import Console

        with Console(stderr=True).status(f"loading {target}"):
            dep = Deployment(resolve, ServeMetrics(), settings.engine)
        served = [m for m, kind in settings.model_ids().items() if not (dep.spec.merged and kind == "base")]
        what = f"the merged {dep.variant} variant of {dep.spec.run_dir} (routing off)" if dep.spec.merged else str(dep.spec.run_dir)
        typer.echo(f"serving {what} on http://{host}:{port}/v1 as {', '.join(served)}", err=True)
        uvicorn.run(create_app(resolve, settings, deployment=dep), host=host, port=port, log_level="info")
