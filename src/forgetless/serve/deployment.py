"""What is being served, and hot-swapping it when the target changes.

The server is given a callable that returns what to serve: a run folder, or the registry version
an alias points to now (:class:`~.variant.Pin`: the run folder, the content hashes the registry
recorded and, for a deployment variant, its kind and artifact). Files that no longer match a
recorded hash are refused, and the last good target keeps serving. A run or distilled student is
served as base + adapter; an ``int8`` or ``gguf-<type>`` version as that merged model
(:mod:`.variant`). :class:`Deployment` re-resolves the target at most every ``reload_interval_s``
and, when it or its files changed:

* adapter to adapter on the same base model: the new adapter is loaded into the running model
  under a fresh name and the old one deleted, on the engine's thread between batches (one copy of
  the base weights, no restart, no dropped request);
* anything else (another base, a merged variant in or out): a new engine is built while the old
  one keeps serving, then swapped in; the old engine finishes its queue and stops.
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
from ..hashing import adapter_hash
from ..adapter import attach_run_adapter, run_tokenizer
from ..models import load_model
from ..runfolder import RunFolder, read_run_folder
from .engine import Engine
from .metrics import ServeMetrics
from .monitor import DriftMonitor, run_kl_budget
from .router import Router, load_router
from .variant import ADAPTER, Pin, check_artifact, load_merged

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
    monitor_sample_rate: float = 0.03  # share of adapter answers scored for KL to the base (serve/monitor.py)
    kl_alert: float | None = None  # overrides the run's budget.general_kl as the drift alert threshold


@dataclass(frozen=True)
class RunSpec:
    """The run folder being served, the variant of it, and the stamp of its served files when it was read."""

    run: RunFolder
    stamp: tuple  # (path, [(file, size, mtime_ns)], pins): changes whenever anything served changes
    variant: str = ADAPTER  # adapter, int8 or gguf-<type>
    artifact: Path | None = None  # a merged variant's checked artifact (int8 gate verdict, GGUF file)
    ref: str | None = None  # the registry version (name:version), when served through an alias

    @property
    def merged(self) -> bool:
        """True for a merged variant (no adapter to switch off: no router, no base route)."""
        return self.variant != ADAPTER

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


# A run folder; (run folder, adapter content hash it must have); or a registry version (Pin).
Target = Path | tuple[Path, str] | Pin


def read_target(target: Target, *, known: RunSpec | None = None) -> RunSpec:
    """:func:`read_spec` on what a resolver returned; pinned hashes (a registry alias) are checked.

    ``known``: the spec being served. When the target and the stamps of its files are unchanged it
    is returned as is, without hashing again: a GGUF file can be gigabytes and this runs every
    ``reload_interval_s``; any write to a served file changes its stamp and is hashed again.
    """
    if isinstance(target, tuple):
        target = Pin(target[0], target[1])
    if not isinstance(target, Pin):
        return read_spec(target)
    variant = target.variant
    artifact = target.artifact if variant != ADAPTER else None
    return read_spec(target.run_dir, adapter_sha256=target.adapter_sha256, variant=variant, artifact=artifact,
                     artifact_sha256=target.artifact_sha256, ref=target.ref, known=known)  # fmt: skip


def _file_stamp(p: Path | None) -> tuple | None:
    if p is None or not p.is_file():
        return None
    st = p.stat()
    return str(p), st.st_size, st.st_mtime_ns


def read_spec(
    run_dir: Path,
    *,
    adapter_sha256: str | None = None,
    variant: str = ADAPTER,
    artifact: Path | None = None,
    artifact_sha256: str | None = None,
    ref: str | None = None,
    known: RunSpec | None = None,
) -> RunSpec:
    """Open a run folder to serve: its resolved config (through the one run-folder reader), adapter and variant.

    ``adapter_sha256`` / ``artifact_sha256``: the content hashes the registry recorded; files that
    no longer match them are refused, never served. A GGUF variant needs no adapter (the file holds
    the whole model); an int8 one is rebuilt from the adapter, so both are checked.
    """
    run = read_run_folder(run_dir)
    pins = (variant, adapter_sha256, artifact_sha256, ref, _file_stamp(artifact))
    stamp = (*run.stamp(), pins)
    if known is not None and known.stamp == stamp:
        return known
    if variant in (ADAPTER, "int8"):
        adapter = run.require_adapter()
        if adapter_sha256 is not None and adapter_hash(adapter) != adapter_sha256:
            raise ForgetlessError(f"refusing to serve {adapter}: it changed since it was registered (content hash differs)")
    if variant != ADAPTER:
        artifact = check_artifact(variant, artifact, artifact_sha256)
    return RunSpec(run, stamp, variant=variant, artifact=artifact, ref=ref)


def build_engine(spec: RunSpec, metrics: ServeMetrics, settings: EngineSettings) -> Engine:
    """Load base + adapter + router of a run (or its merged variant alone) and start an engine on them."""
    if spec.merged:
        assert spec.artifact is not None  # read_spec checked it
        model, tok, what = load_merged(spec.run, spec.variant, spec.artifact, allow_remote_code=settings.trust_remote_code)
        name, router = None, None
        log.info("serving %s%s: merged %s; routing, base route and drift monitor off (no adapter to switch off)",
                 spec.run_dir, f" ({spec.ref})" if spec.ref else "", what)  # fmt: skip
    else:
        m = spec.run.model(allow_remote_code=settings.trust_remote_code)
        tok = run_tokenizer(spec.adapter_dir, m)  # a tokens-stage run's extended vocabulary is the adapter's
        base = load_model(m.name, dtype=m.dtype, trust_remote_code=m.trust_remote_code, revision=m.revision)
        name = f"run{next(_names)}"
        model = attach_run_adapter(base, spec.adapter_dir, tok, adapter_name=name)
        router = load_router(spec.run_dir)
        log.info("serving %s (base %s, adapter %s, router %s)", spec.run_dir, m.name, name, router.method if router else "none")
    return Engine(model, tok, adapter_name=name, router=router, metrics=metrics, max_batch=settings.max_batch,
                  batch_window_s=settings.batch_window_s, max_queue=settings.max_queue, variant=spec.variant).start()  # fmt: skip


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
        self.monitor = DriftMonitor(metrics.registry, sample_rate=settings.monitor_sample_rate)
        self._watch()
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
                spec = read_target(self.resolve_target(), known=self.spec)
            except Exception as e:  # noqa: BLE001 - keep serving the last good target
                log.error("target did not resolve, keeping %s: %s", self.spec.run_dir, e)
                return False
            if spec.stamp == self.spec.stamp:
                return False
            try:
                if not spec.merged and not self.spec.merged and spec.base_key == self.spec.base_key:
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
            log.info("now serving %s (%s)", spec.run_dir, spec.variant)
            self.spec, self.loaded_at = spec, time.time()
            self._watch()
            return True
        finally:
            self._lock.release()

    def _watch(self) -> None:
        self.monitor.attach(self.engine)
        self.monitor.set_kl_alert(self.settings.kl_alert if self.settings.kl_alert is not None else run_kl_budget(self.spec.run))

    @property
    def variant(self) -> str:
        """What is served now: ``adapter``, ``int8`` or ``gguf-<type>``."""
        return self.spec.variant

    def close(self) -> None:
        """Stop the drift monitor, then the engine after its queued work."""
        self.monitor.stop()
        self.engine.stop()
