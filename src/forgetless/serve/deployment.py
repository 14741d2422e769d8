"""What is being served, and hot-swapping it when the target changes.

The server is given a callable that returns the folder to serve (a run folder, or whatever a
registry alias points to now). :class:`Deployment` re-resolves it at most every
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

import yaml
from pydantic import ValidationError

from .. import artifacts
from ..errors import ForgetlessError, InputError
from ..io import read_text_file
from ..models import load_model, load_tokenizer
from ..train.config import ModelConfig
from .engine import Engine
from .metrics import ServeMetrics
from .monitor import DriftMonitor, run_kl_budget
from .router import Router, load_router

log = logging.getLogger("forgetless.serve")

_FILES = (artifacts.RESOLVED_CONFIG, f"{artifacts.ADAPTER_DIR}/adapter_config.json",
          f"{artifacts.ADAPTER_DIR}/adapter_model.safetensors", artifacts.ROUTER, artifacts.ROUTER_INFO)  # fmt: skip
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
    """The parts of a run folder the server needs."""

    run_dir: Path
    model: ModelConfig
    adapter_dir: Path
    stamp: tuple  # (path, [(file, size, mtime_ns)]): changes whenever anything served changes

    @property
    def base_key(self) -> tuple:
        """Two runs with the same base key share base weights."""
        return (self.model.name, self.model.dtype, self.model.revision)


def read_run(run_dir: Path) -> RunSpec:
    """Check a run folder and read its base model settings (``model`` section of the resolved config)."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ForgetlessError(f"run folder {run_dir} does not exist")
    cfg_path = run_dir / artifacts.RESOLVED_CONFIG
    if not cfg_path.exists():
        raise ForgetlessError(f"{run_dir} is not a run folder: {artifacts.RESOLVED_CONFIG} is missing")
    try:
        cfg = yaml.safe_load(read_text_file(cfg_path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"not valid YAML: {getattr(e, 'problem', e)}", file=cfg_path, line=mark.line + 1 if mark else None) from None
    if not isinstance(cfg, dict):
        raise InputError("expected a mapping", file=cfg_path)
    try:
        model = ModelConfig.model_validate(cfg.get("model") or {})
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(err["msg"], file=cfg_path, field="model." + ".".join(str(p) for p in err["loc"])) from None
    adapter = run_dir / artifacts.ADAPTER_DIR
    if not (adapter / "adapter_config.json").exists():
        raise ForgetlessError(f"{run_dir} has no adapter ({adapter}/adapter_config.json is missing): nothing to serve")
    stamp = []
    for name in _FILES:
        p = run_dir / name
        if p.exists():
            st = p.stat()
            stamp.append((name, st.st_size, st.st_mtime_ns))
    return RunSpec(run_dir=run_dir, model=model, adapter_dir=adapter, stamp=(str(run_dir), tuple(stamp)))


def build_engine(spec: RunSpec, metrics: ServeMetrics, settings: EngineSettings) -> Engine:
    """Load base + adapter + router of a run and start an engine on them."""
    from peft import PeftModel

    if spec.model.trust_remote_code and not settings.trust_remote_code:
        raise ForgetlessError(
            f"{spec.run_dir} was trained with model.trust_remote_code=true; serving it runs the model's own "
            "code: pass --trust-remote-code if you trust it"
        )
    trust = spec.model.trust_remote_code and settings.trust_remote_code
    tok = load_tokenizer(spec.model.name, trust_remote_code=trust, revision=spec.model.revision)
    base = load_model(spec.model.name, dtype=spec.model.dtype, trust_remote_code=trust, revision=spec.model.revision)
    name = f"run{next(_names)}"
    model = PeftModel.from_pretrained(base, str(spec.adapter_dir), adapter_name=name, is_trainable=False)
    model.eval()
    router = load_router(spec.run_dir)
    log.info("serving %s (base %s, adapter %s, router %s)", spec.run_dir, spec.model.name, name, router.method if router else "none")
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

    def __init__(self, resolve_target: Callable[[], Path], metrics: ServeMetrics, settings: EngineSettings) -> None:
        self.resolve_target, self.metrics, self.settings = resolve_target, metrics, settings
        self.spec = read_run(resolve_target())
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
                spec = read_run(self.resolve_target())
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
            self._watch()
            return True
        finally:
            self._lock.release()

    def _watch(self) -> None:
        self.monitor.attach(self.engine)
        self.monitor.set_kl_alert(self.settings.kl_alert if self.settings.kl_alert is not None else run_kl_budget(self.spec.run_dir))

    def close(self) -> None:
        """Stop the drift monitor, then the engine after its queued work."""
        self.monitor.stop()
        self.engine.stop()
