"""What a registered version is: its row, its lineage fields, and the names the registry accepts."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

# A name is one path-safe token: letters, digits, '.', '_', '-', starting with a letter or digit.
# That alone rejects '../x', 'a/b' and '' -- names end up in file names and URLs elsewhere.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # used with fullmatch: "$" would accept a trailing newline

LINEAGE_FIELDS = ("base_model", "base_sha256", "tokenizer_sha256", "data_sha256", "config_sha256", "code_version", "adapter_sha256", "kind", "source", "artifact_sha256")


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a safe registry name, else raise :class:`InputError` saying why."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise InputError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (no '/' or '..')"
        )
    return name


@dataclass
class Version:
    """One registered model version (a row of ``versions``)."""

    id: int
    name: str
    version: int
    run_dir: str
    base_model: str
    adapter_sha256: str
    base_sha256: str
    tokenizer_sha256: str
    data_sha256: str
    config_sha256: str
    code_version: str
    selected_step: int | None
    scores: dict[str, float]
    base_scores: dict[str, float]
    budget_general_kl: float | None
    domain_pass: bool
    general_pass: bool
    reasons: list[str]
    created_at: str
    budget_state: str = "unknown"  # inside, outside, unset (no budget set); unknown for rows registered before it was recorded
    kind: str = "run"
    source: str | None = None
    artifact: str | None = None
    artifact_sha256: str | None = None
    gate_pass: bool = True

    @property
    def ref(self) -> str:
        """``name:version``, the form every command accepts."""
        return f"{self.name}:{self.version}"

    @property
    def passes(self) -> bool:
        """Both suites pass, and a deployment variant's gate too: the only versions that may be promoted."""
        return self.domain_pass and self.general_pass and self.gate_pass

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        d = dict(self.__dict__)
        d["ref"] = self.ref
        return d

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> Version:
        d = dict(row)
        for k in ("scores", "base_scores", "reasons"):
            d[k] = json.loads(d[k])
        d["domain_pass"], d["general_pass"], d["gate_pass"] = bool(d["domain_pass"]), bool(d["general_pass"]), bool(d["gate_pass"])
        return cls(**d)
