"""What a run folder records about itself: versions and content hashes (lineage)."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

from .hashing import sha256_file, sha256_text

PACKAGES = ("forgetless", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "tokenizers", "numpy")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide a run's numbers."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def data_hashes(files: list[Path]) -> dict[str, str]:
    """SHA-256 of each data file, keyed by path."""
    return {str(f): sha256_file(f) for f in files}


def code_version() -> str:
    """forgetless' version plus the git commit when running from a checkout (for registry lineage)."""
    import subprocess

    from . import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            return f"{__version__}+{rev.stdout.strip()[:12]}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def run_info(*, config_yaml: str, base: str, tokenizer: str, data: dict[str, str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run_info.json payload."""
    return {
        "code_version": code_version(),
        "versions": library_versions(),
        "hashes": {"base_weights": base, "tokenizer": tokenizer, "data": data, "config": sha256_text(config_yaml)},
        **(extra or {}),
    }
