"""Content hashes for lineage: base weights, tokenizer, data, config and adapters.

Below every stage: the registry records these hashes, and serve, deploy and distill check files
against them with the same definitions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import InputError


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (weights can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[str | Path]) -> str:
    """One hash over several files: each file's name and content hash, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def adapter_hash(adapter_dir: Path) -> str:
    """Content hash of an adapter folder: every file's name and SHA-256 (sorted)."""
    files = [p for p in adapter_dir.rglob("*") if p.is_file()]
    if not files:
        raise InputError("adapter folder is empty", file=adapter_dir)
    return sha256_files(files)


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serialisable object in canonical form (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
