"""What is being served, and hot-swapping it when the target changes.

The server is given a callable that returns the folder to serve (a run folder, or whatever a
registry alias points to now, with the adapter hash the registry recorded: a folder whose adapter
no longer matches it is refused, and the last good one keeps serving). :class:`Deployment` re-resolves it at most every
``reload_interval_s`` and, when the folder or its files changed:

* same base model: the new adapter is loaded into the running model under a fresh name and the
  old one deleted, on the engine's thread between batches (one copy of the base weights, no
  restart, no dropped request);
* different base model: a new engine is built while the old one keeps serving, then swapped in;
  the old engine finishes its queue and stops.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ForgetlessError
from ..models import load_model, load_tokenizer
from ..runfolder import RunFolder, read_run_folder
from .engine import Engine
from .metrics import ServeMetrics
from .router import Router, load_router

log = logging.getLogger("forgetless.serve")

_names = itertools.count(1)


@dataclass
class EngineSettings:
    """How the engine batches and how often the target is re-resolved."""

    max_batch: int = 32
    batch_window_s: float = 0.005
    max_queue: int = 256
    reload_interval_s: float = 2.0
    trust_remote_code: bool = False


@dataclass(frozen=True)
class RunSpec:
    """The run folder being served, and the stamp of its served files when it was read."""

    run: RunFolder
    stamp: tuple  # (path, [(file, size, mtime_ns)]): changes whenever anything served changes

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return self.run.path

    @property
    def adapter_dir(self) -> Path:
        """The run's final adapter."""
        return self.run.adapter_dir

    @property
    def base_key(self) -> tuple:
        """Two runs with the same base key share base weights."""
        m = self.run.config.model
        return (m.name, m.dtype, m.revision)


Target = Path | tuple[Path, str]  # a run folder, or (run folder, adapter content hash it must have)


def read_target(target: Target) -> RunSpec:
    """:func:`read_spec` on what a resolver returned; a pinned hash (a registry alias) is checked."""
    if isinstance(target, tuple):
        return read_spec(target[0], adapter_sha256=target[1])
    return read_spec(target)


def read_spec(run_dir: Path, *, adapter_sha256: str | None = None) -> RunSpec:
    """Open a run folder to serve: its resolved config (through the one run-folder reader) and adapter.

    ``adapter_sha256``: the content hash the registry recorded for this adapter; files that no
    longer match it are refused, never served.
    """
    run = read_run_folder(run_dir)
    adapter = run.require_adapter()
    if adapter_sha256 is not None:
        from ..registry.lineage import adapter_hash  # the registry's own definition of the hash

        if adapter_hash(adapter) != adapter_sha256:
            raise ForgetlessError(f"refusing to serve {adapter}: it changed since it was registered (content hash differs)")
    return RunSpec(run, (*run.stamp(), adapter_sha256))


def build_engine(spec: RunSpec, metrics: ServeMetrics, settings: EngineSettings) -> Engine:
    """Load base + adapter + router of a run and start an engine on them."""
    from peft import PeftModel

    m = spec.run.model(allow_remote_code=settings.trust_remote_code)
    tok = load_tokenizer(m.name, trust_remote_code=m.trust_remote_code, revision=m.revision)
    base = load_model(m.name, dtype=m.dtype, trust_remote_code=m.trust_remote_code, revision=m.revision)
    name = f"run{next(_names)}"
    model = PeftModel.from_pretrained(base, str(spec.adapter_dir), adapter_name=name, is_trainable=False)
    model.eval()
    router = load_router(spec.run_dir)
    log.info("serving %s (base %s, adapter %s, router %s)", spec.run_dir, m.name, name, router.method if router else "none")
    return Engine(model, tok, adapter_name=name, router=router, metrics=metrics, max_batch=settings.max_batch,
                  batch_window_s=settings.batch_window_s, max_queue=settings.max_queue).start()  # fmt: skip


def _swap_adapter(engine: Engine, spec: RunSpec, router: Router | None) -> None:
    """Runs on the engine thread: load the new adapter next to the old one, switch, delete the old one."""
    old, new = engine.adapter_name, f"run{next(_names)}"
    engine.model.load_adapter(str(spec.adapter_dir), adapter_name=new, is_trainable=False)
    engine.model.set_adapter(new)
    engine.adapter_name, engine.router = new, router
    engine.model.delete_adapter(old)
    if router is not None:
        engine.metrics.router_threshold.set(router.threshold)


class Deployment:
    """The engine serving the current target, re-resolved and hot-swapped as the target changes."""

    def __init__(self, resolve_target: Callable[[], Target], metrics: ServeMetrics, settings: EngineSettings) -> None:
        self.resolve_target, self.metrics, self.settings = resolve_target, metrics, settings
        self.spec = read_target(resolve_target())
        self.engine = build_engine(self.spec, metrics, settings)
        self.loaded_at = time.time()
        self._checked = time.monotonic()
        self._lock = threading.Lock()  # one swap at a time; requests never wait on it

    def refresh(self, *, force: bool = False) -> bool:
        """Re-resolve the target (at most every ``reload_interval_s``); swap if it changed. Returns whether it swapped.

        A target that fails to resolve or load is logged and the current one keeps serving: a bad
        promote must not take the server down.
        """
        if not force and time.monotonic() - self._checked < self.settings.reload_interval_s:
            return False
        if not self._lock.acquire(blocking=force):
            return False  # another request is already checking or swapping
        try:
            self._checked = time.monotonic()
            try:
                spec = read_target(self.resolve_target())
            except Exception as e:  # noqa: BLE001 - keep serving the last good target
                log.error("target did not resolve, keeping %s: %s", self.spec.run_dir, e)
                return False
            if spec.stamp == self.spec.stamp:
                return False
            try:
                if spec.base_key == self.spec.base_key:
                    router = load_router(spec.run_dir)
                    self.engine.call(lambda: _swap_adapter(self.engine, spec, router)).result()
                    self.metrics.reloads.labels("adapter").inc()
                else:
                    new = build_engine(spec, self.metrics, self.settings)
                    old, self.engine = self.engine, new
                    old.stop()
                    self.metrics.reloads.labels("base").inc()
            except Exception as e:  # noqa: BLE001 - keep serving the last good target
                log.error("could not load %s, keeping %s: %s", spec.run_dir, self.spec.run_dir, e)
                return False
            log.info("now serving %s", spec.run_dir)
            self.spec, self.loaded_at = spec, time.time()
            return True
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the engine after its queued work."""
        self.engine.stop()
