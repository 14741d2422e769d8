"""File IO helpers: atomic writes and JSONL reading with file/line errors.

Every write in forgetless goes through :func:`atomic_write_bytes` (temp file in the same folder,
fsync, rename) so a run killed at any moment never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError

# Editors on Windows save "UTF-8" with this mark in front; it is not part of the text.
UTF8_BOM = b"\xef\xbb\xbf"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (keys kept in insertion order)."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Atomically write a whole JSONL file."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record to a JSONL log, flushed and fsynced so a crash loses at most this line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 text file (a leading BOM is dropped); a non-UTF-8 file raises :class:`InputError` naming the line."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path)
    raw = path.read_bytes().removeprefix(UTF8_BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})", file=path, line=line) from None


def iter_jsonl(path: str | Path, *, allow_empty: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL file.

    A UTF-8 BOM at the start of the file is skipped. Raises :class:`InputError` naming the file and
    line for: a missing file, bytes that are not UTF-8, a line that is not JSON (or nested too deeply), a line that is not a JSON object, and (unless ``allow_empty``)
    a file with no records at all.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path)
    n = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1:
                raw = raw.removeprefix(UTF8_BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})", file=path, line=lineno) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not valid JSON: {e.msg} (column {e.colno})", file=path, line=lineno) from None
            except RecursionError:
                # json's C parser recurses once per nesting level: a line of 100k "[" overflows it.
                raise InputError("not valid JSON: nested too deeply", file=path, line=lineno) from None
            if not isinstance(obj, dict):
                raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=lineno)
            n += 1
            yield lineno, obj
    if n == 0 and not allow_empty:
        raise InputError("file is empty (no JSON records)", file=path)


def read_jsonl(path: str | Path, *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Read all records of a JSONL file (see :func:`iter_jsonl` for the errors raised)."""
    return [r for _, r in iter_jsonl(path, allow_empty=allow_empty)]
