"""Read a run folder: the one reader that serve, the registry, deploy and the reports share.

A run folder describes itself (names in :mod:`forgetless.artifacts`). Its resolved config is loaded
through :func:`forgetless.config.load_config`, so every setting, the model's revision and
remote-code flag included, travels with the run into whatever is done with it later. Each file is
read lazily, when asked for, and a bad one raises :class:`~forgetless.errors.InputError` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import artifacts as A
from .config import RunConfig, load_config
from .errors import ForgetlessError, InputError
from .hashing import sha256_json
from .io import iter_jsonl, read_text_file
from .model_config import ModelConfig

# Files whose change means a different model is being served (the server watches these).
SERVED_FILES = (A.RESOLVED_CONFIG, f"{A.ADAPTER_DIR}/adapter_config.json", f"{A.ADAPTER_DIR}/adapter_model.safetensors", A.ROUTER, A.ROUTER_INFO)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", file=path, line=e.lineno) from None


@dataclass(frozen=True)
class RunFolder:
    """A run folder on disk and its resolved config."""

    path: Path
    config: RunConfig

    @property
    def adapter_dir(self) -> Path:
        """The run's final adapter (standard PEFT layout)."""
        return self.path / A.ADAPTER_DIR

    @property
    def has_adapter(self) -> bool:
        """True when the run exported a final adapter."""
        return (self.adapter_dir / "adapter_config.json").exists()

    def require_adapter(self) -> Path:
        """The adapter folder, or a clear error when the run has none (it selected no checkpoint)."""
        if not self.has_adapter:
            raise ForgetlessError(f"{self.path} has no final adapter ({A.ADAPTER_DIR}/adapter_config.json is missing)")
        return self.adapter_dir

    def model(self, *, allow_remote_code: bool = False) -> ModelConfig:
        """The base model settings to load this run's base with (revision included).

        A run trained with ``model.trust_remote_code`` runs the model's own code when loaded: the
        caller must allow that explicitly, never by default.
        """
        m = self.config.model
        if m.trust_remote_code and not allow_remote_code:
            raise ForgetlessError(
                f"{self.path} was trained with model.trust_remote_code=true; loading it runs the model's own code: "
                "pass --trust-remote-code if you trust it"
            )
        return m

    def config_sha256(self) -> str:
        """Content hash of the resolved config as written, ignoring ``run_dir``: the same job run
        into two folders has the same hash, and a later forgetless adding defaults does not change it."""
        raw = yaml.safe_load(read_text_file(self.path / A.RESOLVED_CONFIG)) or {}
        return sha256_json({k: v for k, v in raw.items() if k != "run_dir"})

    def read_json(self, name: str) -> Any:
        """A JSON file of the run folder by its artifact name (relative path); None when absent."""
        path = self.path / name
        return _load_json(path) if path.exists() else None

    def summary(self) -> dict[str, Any]:
        """summary.json (the run's outcome); an error if the run did not finish."""
        path = self.path / A.SUMMARY
        if not path.exists():
            raise InputError("no summary: the run did not finish", file=path)
        obj = _load_json(path)
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", file=path)
        return obj

    def info(self) -> dict[str, Any]:
        """run_info.json (versions and content hashes); {} for a folder assembled without one."""
        path = self.path / A.RUN_INFO
        obj = _load_json(path) if path.exists() else {}
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", file=path)
        return obj

    def metrics(self) -> list[dict[str, Any]]:
        """Every evaluation line of metrics.jsonl (each with an integer ``step``), sorted by step."""
        path = self.path / A.METRICS
        rows = []
        for line, rec in iter_jsonl(path):
            if not isinstance(rec.get("step"), int):
                raise InputError("missing integer 'step'", file=path, line=line, field="step")
            rows.append(rec)
        return sorted(rows, key=lambda r: r["step"])

    def scale_curve(self) -> list[dict[str, Any]]:
        """The adapter-scale sweep (empty when the run did not sweep)."""
        path = self.path / A.SCALE_CURVE
        obj = _load_json(path) if path.exists() else []
        if not isinstance(obj, list):
            raise InputError("expected a JSON list", file=path)
        return obj

    def selected(self) -> tuple[int, float, dict[str, Any]]:
        """``(step, adapter scale, metrics)`` of the evaluation the run exported.

        The metrics are those of the exported adapter: at a scale other than 1 they come from the
        scale sweep, not from the checkpoint's own line. Raises when the run kept the base.
        """
        summary = self.summary()
        sel = summary.get("selected")
        if sel is None and "selected" in summary:
            raise InputError(
                f"the run selected no checkpoint ({summary.get('verdict', 'no verdict')}): there is no tuned model",
                file=self.path / A.SUMMARY,
            )
        rows = self.metrics()
        if not isinstance(sel, dict) or not isinstance(sel.get("step"), int):
            if not rows:
                raise InputError("no evaluations recorded", file=self.path / A.METRICS)
            return rows[-1]["step"], 1.0, rows[-1]  # no selection recorded: the adapter is the last step
        step, scale = sel["step"], float(sel.get("scale", 1.0))
        if isinstance(sel.get("metrics"), dict):
            return step, scale, sel["metrics"]
        if scale != 1.0:
            for c in self.scale_curve():
                if c.get("step") == step and float(c.get("scale", 1.0)) == scale:
                    return step, scale, c
            raise InputError(f"selected step {step} at scale {scale} has no entry in {A.SCALE_CURVE}", file=self.path / A.SUMMARY)
        for r in rows:
            if r["step"] == step:
                return step, scale, r
        raise InputError(f"selected step {step} has no line in {A.METRICS}", file=self.path / A.SUMMARY)

    def stamp(self) -> tuple[str, tuple[tuple[str, int, int], ...]]:
        """(path, [(file, size, mtime_ns)]) of the served files: changes whenever any of them does."""
        out = []
        for name in SERVED_FILES:
            p = self.path / name
            if p.exists():
                st = p.stat()
                out.append((name, st.st_size, st.st_mtime_ns))
        return str(self.path), tuple(out)


def is_run_folder(path: str | Path) -> bool:
    """True when ``path`` holds a resolved config (what every run writes first)."""
    return (Path(path) / A.RESOLVED_CONFIG).is_file()


def read_run_folder(path: str | Path) -> RunFolder:
    """Open a run folder and load its resolved config; raises :class:`InputError` (or ``ConfigError``) naming what is wrong."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise InputError("run folder not found", file=path)
    cfg_path = path / A.RESOLVED_CONFIG
    if not cfg_path.exists():
        raise InputError(f"not a run folder: {A.RESOLVED_CONFIG} is missing", file=path)
    return RunFolder(path, load_config(cfg_path))  # a bad config raises ConfigError naming file and line
