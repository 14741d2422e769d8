"""The user cache folder: converted models and base-model references computed once, reused by runs."""

from __future__ import annotations

import os
from pathlib import Path

from .artifacts import CACHE_ENV


def cache_root() -> Path:
    """Root of forgetless' cache: ``$FORGETLESS_CACHE``, else ``$XDG_CACHE_HOME/forgetless``, else ``~/.cache/forgetless``."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forgetless"


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache, created on demand."""
    p = cache_root().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
