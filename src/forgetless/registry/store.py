"""The model registry: versions with lineage and scores, and aliases (``prod``, ``staging``) on SQLite.

Every write runs in one ``BEGIN IMMEDIATE`` transaction, so two CLI processes registering or
promoting at the same time serialise on SQLite's write lock instead of racing (a version number
is handed out once; an alias never points at a half-written row). WAL mode lets ``serve`` keep
reading the alias while a promotion commits.

An alias keeps its history as a stack: ``promote`` pushes a version, ``rollback`` pops back to the
one before. The registry stores paths and content hashes, never copies of weights.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import artifacts
from ..cache import cache_root
from ..errors import ForgetlessError, InputError
from ..hashing import adapter_hash, sha256_file
from .lineage import RunRecord, read_run, read_variant
from .version import LINEAGE_FIELDS, Version, validate_name

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    run_dir TEXT NOT NULL,
    base_model TEXT NOT NULL,
    adapter_sha256 TEXT NOT NULL,
    base_sha256 TEXT NOT NULL,
    tokenizer_sha256 TEXT NOT NULL,
    data_sha256 TEXT NOT NULL,
    config_sha256 TEXT NOT NULL,
    code_version TEXT NOT NULL,
    selected_step INTEGER,
    scores TEXT NOT NULL,
    base_scores TEXT NOT NULL,
    budget_general_kl REAL,
    domain_pass INTEGER NOT NULL,
    general_pass INTEGER NOT NULL,
    reasons TEXT NOT NULL,
    created_at TEXT NOT NULL,
    budget_state TEXT NOT NULL DEFAULT 'unknown',
    UNIQUE (name, version)
);
-- kind/source/artifact/gate: see VARIANT_COLUMNS (added to older databases on open).
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alias_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alias TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
    version_id INTEGER NOT NULL REFERENCES versions(id),
    at TEXT NOT NULL
);
"""


# What a version is, beyond a run's adapter: ``kind`` is ``run``, ``distill`` (a student run trained
# on a teacher's answers), ``int8`` or ``gguf-<type>`` (a deployment variant of a run); ``source`` is
# the run it came from (the teacher, for a student); ``artifact`` the file its gate verdict or
# weights live in, with its hash; ``gate_pass`` the variant's quality gate against fp32.
VARIANT_COLUMNS = {
    "kind": "TEXT NOT NULL DEFAULT 'run'",
    "source": "TEXT",
    "artifact": "TEXT",
    "artifact_sha256": "TEXT",
    "gate_pass": "INTEGER NOT NULL DEFAULT 1",
}


def default_db_path() -> Path:
    """``$FORGETLESS_REGISTRY`` if set, else ``registry.sqlite`` in the user cache root."""
    if env := os.environ.get(artifacts.REGISTRY_ENV):
        return Path(env)
    return cache_root() / artifacts.REGISTRY_DB


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    """A handle on one registry database (created on first use)."""

    def __init__(self, db_path: str | Path | None = None) -> None:
        self.path = Path(db_path) if db_path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            # WAL: readers (serve polling an alias) never block the writer, nor it them.
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            # Databases made before a column was recorded gain it (idempotent: the column list is
            # checked first).
            have = {r[1] for r in con.execute("PRAGMA table_info(versions)")}
            for col, decl in {"budget_state": "TEXT NOT NULL DEFAULT 'unknown'", **VARIANT_COLUMNS}.items():
                if col not in have:
                    con.execute(f"ALTER TABLE versions ADD COLUMN {col} {decl}")

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is taken
        # before the first read of a read-modify-write (no lost update between two processes).
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        con = self._connect()
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    # --- versions -------------------------------------------------------------------------------

    def register(
        self, run_dir: str | Path, name: str, *, record: RunRecord | None = None, variant: str | None = None
    ) -> tuple[Version, bool]:
        """Register a run folder (or, with ``variant``, one of its gated deployment variants) as the
        next version of ``name``; returns ``(version, created)``.

        Registering the same adapter, config and artifact under the same name again returns the
        existing version (``created`` False) instead of minting a duplicate. A variant whose gate
        refused it is registered with ``gate_pass`` False (so the refusal is on record) and can
        never be promoted.
        """
        validate_name(name)
        rec = record if record is not None else read_run(run_dir)
        v = read_variant(rec, variant)
        with self._write() as con:
            # One namespace for names and aliases: `get("x")` must never have two meanings.
            if con.execute("SELECT 1 FROM alias_events WHERE alias=? LIMIT 1", (name,)).fetchone():
                raise InputError(f"invalid name {name!r}: it is already an alias in registry {self.path}; pick another name")
            row = con.execute(
                "SELECT * FROM versions WHERE name=? AND adapter_sha256=? AND config_sha256=? AND kind=? AND artifact_sha256 IS ?",
                (name, rec.adapter_sha256, rec.config_sha256, v["kind"], v["artifact_sha256"]),
            ).fetchone()
            if row is not None:
                return Version._from_row(row), False
            (nxt,) = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name=?", (name,)).fetchone()
            cur = con.execute(
                "INSERT INTO versions (name, version, run_dir, base_model, adapter_sha256, base_sha256, tokenizer_sha256,"
                " data_sha256, config_sha256, code_version, selected_step, scores, base_scores, budget_general_kl,"
                " domain_pass, general_pass, reasons, created_at, budget_state, kind, source, artifact, artifact_sha256, gate_pass)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    name, nxt, rec.run_dir, rec.base_model, rec.adapter_sha256, rec.base_sha256, rec.tokenizer_sha256,
                    rec.data_sha256, rec.config_sha256, rec.code_version, rec.selected_step, json.dumps({**rec.scores, **v["scores"]}),
                    json.dumps(rec.base_scores), rec.budget_general_kl, int(rec.domain_pass), int(rec.general_pass),
                    json.dumps(rec.reasons + v["reasons"]), _now(), rec.budget_state, v["kind"], v["source"], v["artifact"],
                    v["artifact_sha256"], int(v["gate_pass"]),
                ),
            )  # fmt: skip
            row = con.execute("SELECT * FROM versions WHERE id=?", (cur.lastrowid,)).fetchone()
            return Version._from_row(row), True

    def versions(self, name: str | None = None) -> list[Version]:
        """All versions (of one name, if given), oldest first."""
        if name is None:
            rows = self._read("SELECT * FROM versions ORDER BY name, version")
        else:
            rows = self._read("SELECT * FROM versions WHERE name=? ORDER BY version", (validate_name(name),))
        return [Version._from_row(r) for r in rows]

    def get(self, ref: str) -> Version:
        """Look up ``name:version``, ``name`` (its latest version) or an alias such as ``prod``."""
        name, sep, ver = ref.partition(":")
        validate_name(name, "reference")
        if sep:
            if not ver.isdigit():
                raise InputError(f"invalid reference {ref!r}: the version after ':' must be a number")
            rows = self._read("SELECT * FROM versions WHERE name=? AND version=?", (name, int(ver)))
        else:
            rows = self._read("SELECT v.* FROM versions v JOIN aliases a ON a.version_id=v.id WHERE a.alias=?", (name,))
            if not rows:
                rows = self._read("SELECT * FROM versions WHERE name=? ORDER BY version DESC LIMIT 1", (name,))
        if not rows:
            raise ForgetlessError(f"no model version or alias {ref!r} in registry {self.path}")
        return Version._from_row(rows[0])

    # --- aliases --------------------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        """Alias -> ``name:version`` it points at now."""
        rows = self._read("SELECT a.alias, v.name, v.version FROM aliases a JOIN versions v ON v.id=a.version_id ORDER BY a.alias")
        return {r["alias"]: f"{r['name']}:{r['version']}" for r in rows}

    def history(self, alias: str) -> list[dict[str, Any]]:
        """Every promote/rollback of ``alias``, oldest first."""
        rows = self._read(
            "SELECT e.action, e.at, v.name, v.version FROM alias_events e JOIN versions v ON v.id=e.version_id"
            " WHERE e.alias=? ORDER BY e.id",
            (validate_name(alias, "alias"),),
        )
        return [{"action": r["action"], "at": r["at"], "ref": f"{r['name']}:{r['version']}"} for r in rows]

    @staticmethod
    def _stack(con: sqlite3.Connection, alias: str) -> list[int]:
        # Replay the events: promote pushes, rollback pops. The top is the alias' current version.
        stack: list[int] = []
        for action, vid in con.execute("SELECT action, version_id FROM alias_events WHERE alias=? ORDER BY id", (alias,)):
            if action == "promote":
                stack.append(vid)
            elif stack:
                stack.pop()
        return stack

    def promote(self, ref: str, alias: str, *, allow_no_budget: bool = False) -> Version:
        """Point ``alias`` at a version, only if both suites passed and its adapter is unchanged on disk.

        A run trained with no forgetting budget has no general verdict to pass: it is promoted only
        with ``allow_no_budget`` (its domain suite must still pass).
        """
        validate_name(alias, "alias")
        v = self.get(ref)
        if not v.gate_pass:
            why = "; ".join(v.reasons) or "gate verdict recorded as refused"
            raise ForgetlessError(f"refusing to promote {v.ref} to '{alias}': its {v.kind} quality gate failed ({why})")
        unbudgeted = v.budget_state == "unset" and allow_no_budget
        if not v.domain_pass or not (v.general_pass or unbudgeted):
            failed = [s for s, ok in (("domain", v.domain_pass), ("general", v.general_pass or unbudgeted)) if not ok]
            why = "; ".join(v.reasons) or "suite verdict recorded as failed"
            hint = " (pass --allow-no-budget to promote a run that set no budget)" if v.budget_state == "unset" else ""
            raise ForgetlessError(f"refusing to promote {v.ref} to '{alias}': {' and '.join(failed)} suite failed ({why}){hint}")
        if v.artifact is not None and (not Path(v.artifact).is_file() or sha256_file(v.artifact) != v.artifact_sha256):
            raise ForgetlessError(f"refusing to promote {v.ref}: {v.artifact} is gone or changed since it was registered")
        adapter = Path(v.run_dir) / artifacts.ADAPTER_DIR
        if not adapter.is_dir():
            raise ForgetlessError(f"refusing to promote {v.ref}: its adapter folder {adapter} is gone")
        if adapter_hash(adapter) != v.adapter_sha256:
            raise ForgetlessError(f"refusing to promote {v.ref}: {adapter} changed since it was registered (content hash differs)")
        with self._write() as con:
            if con.execute("SELECT 1 FROM versions WHERE name=? LIMIT 1", (alias,)).fetchone():
                raise InputError(f"invalid alias {alias!r}: a model of that name is registered in {self.path}; pick another alias")
            stack = self._stack(con, alias)
            if stack and stack[-1] == v.id:
                return v  # already there: promoting again would only bury the rollback target
            con.execute("INSERT INTO alias_events (alias, action, version_id, at) VALUES (?, 'promote', ?, ?)", (alias, v.id, _now()))
            con.execute(
                "INSERT INTO aliases (alias, version_id, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(alias) DO UPDATE SET version_id=excluded.version_id, updated_at=excluded.updated_at",
                (alias, v.id, _now()),
            )
        return v

    def rollback(self, alias: str) -> Version:
        """Point ``alias`` back at the version it had before its latest promotion."""
        validate_name(alias, "alias")
        with self._write() as con:
            stack = self._stack(con, alias)
            if not stack:
                raise ForgetlessError(f"alias '{alias}' was never promoted")
            if len(stack) < 2:
                raise ForgetlessError(f"alias '{alias}' has no earlier version to roll back to")
            target = stack[-2]
            con.execute("INSERT INTO alias_events (alias, action, version_id, at) VALUES (?, 'rollback', ?, ?)", (alias, stack[-1], _now()))
            con.execute("UPDATE aliases SET version_id=?, updated_at=? WHERE alias=?", (target, _now(), alias))
            row = con.execute("SELECT * FROM versions WHERE id=?", (target,)).fetchone()
        return Version._from_row(row)

    def resolve(self, alias: str) -> Path:
        """The run folder an alias points at now (cheap: one indexed read, safe to poll)."""
        validate_name(alias, "alias")
        rows = self._read("SELECT v.run_dir FROM aliases a JOIN versions v ON v.id=a.version_id WHERE a.alias=?", (alias,))
        if not rows:
            raise ForgetlessError(f"alias '{alias}' is not set in registry {self.path}; promote a version first")
        return Path(rows[0]["run_dir"])

    def resolve_version(self, alias: str) -> Version:
        """The version an alias points at now (an alias only, never a name's latest version).

        What a server needs to load exactly what was promoted: the run folder, the adapter hash
        and, for a deployment variant, its kind, artifact and artifact hash.
        """
        validate_name(alias, "alias")
        rows = self._read("SELECT v.* FROM aliases a JOIN versions v ON v.id=a.version_id WHERE a.alias=?", (alias,))
        if not rows:
            raise ForgetlessError(f"alias '{alias}' is not set in registry {self.path}; promote a version first")
        return Version._from_row(rows[0])

    def resolve_pinned(self, alias: str) -> tuple[Path, str]:
        """The run folder an alias points at now and the adapter content hash recorded at registration.

        A server loading that folder checks the hash, so files changed after registration are
        never served under the alias.
        """
        validate_name(alias, "alias")
        rows = self._read(
            "SELECT v.run_dir, v.adapter_sha256 FROM aliases a JOIN versions v ON v.id=a.version_id WHERE a.alias=?", (alias,)
        )
        if not rows:
            raise ForgetlessError(f"alias '{alias}' is not set in registry {self.path}; promote a version first")
        return Path(rows[0]["run_dir"]), rows[0]["adapter_sha256"]

    # --- comparison -----------------------------------------------------------------------------

    def diff(self, ref_a: str, ref_b: str) -> dict[str, Any]:
        """What differs between two versions: lineage fields, scores (with deltas) and verdicts."""
        a, b = self.get(ref_a), self.get(ref_b)
        lineage = {f: (getattr(a, f), getattr(b, f)) for f in LINEAGE_FIELDS if getattr(a, f) != getattr(b, f)}
        scores = {}
        for k in sorted(set(a.scores) | set(b.scores)):
            va, vb = a.scores.get(k), b.scores.get(k)
            if va != vb:
                scores[k] = {"a": va, "b": vb, "delta": (vb - va) if va is not None and vb is not None else None}
        verdict = {
            s: (getattr(a, f"{s}_pass"), getattr(b, f"{s}_pass"))
            for s in ("domain", "general")
            if getattr(a, f"{s}_pass") != getattr(b, f"{s}_pass")
        }
        return {"a": a.ref, "b": b.ref, "lineage": lineage, "scores": scores, "verdict": verdict}


def resolve_alias(alias: str, db_path: Path | None = None) -> Path:
    """The run folder that registry alias ``alias`` points at now (for ``forgetless serve registry:ALIAS``).

    Re-read on every call, so a server that calls it again picks up a promote or rollback
    without restarting. Raises :class:`ForgetlessError` when the alias is not set.
    """
    return Registry(db_path).resolve(alias)


def resolve_alias_pinned(alias: str, db_path: Path | None = None) -> tuple[Path, str]:
    """As :func:`resolve_alias`, plus the adapter content hash the registry recorded for that version."""
    return Registry(db_path).resolve_pinned(alias)


def resolve_alias_version(alias: str, db_path: Path | None = None) -> Version:
    """As :func:`resolve_alias`, but the whole version (kind, artifact and hashes included)."""
    return Registry(db_path).resolve_version(alias)
