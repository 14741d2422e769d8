"""Read curate inputs one record at a time, turning bad input into rejects instead of crashes.

Unlike the training loader (which stops at the first bad line), curation must account for every
line: a line that is not UTF-8, not JSON or not a valid record becomes a reject with the reason
and a message naming file, line and field, and its raw bytes are kept so nothing is lost.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import TEXT_SUFFIXES, record_to_example
from ..errors import InputError
from ..io import UTF8_BOM


@dataclass
class RawRecord:
    """One input record, valid (``rec``) or not (``reason`` + ``error`` + ``raw``)."""

    file_index: int
    line: int
    nbytes: int
    rec: dict[str, Any] | None = None
    reason: str | None = None  # "unreadable" or "invalid_record" when rec is None
    error: str | None = None
    raw: bytes | None = None

    def raw_field(self) -> dict[str, str]:
        """The raw bytes for a rejects file: as text when UTF-8, else base64 (lossless either way)."""
        if self.raw is None:
            return {}
        try:
            return {"raw": self.raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"raw_base64": base64.b64encode(self.raw).decode("ascii")}


def _parse_line(file: Path, fi: int, lineno: int, raw: bytes) -> RawRecord:
    n = len(raw)
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        err = InputError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})", file=file, line=lineno)
        return RawRecord(fi, lineno, n, reason="unreadable", error=str(err), raw=raw)
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as e:
        msg = f"not valid JSON: {e.msg} (column {e.colno})" if isinstance(e, json.JSONDecodeError) else "not valid JSON: nested too deeply"
        return RawRecord(fi, lineno, n, reason="unreadable", error=str(InputError(msg, file=file, line=lineno)), raw=raw)
    if not isinstance(obj, dict):
        err = InputError(f"expected a JSON object, got {type(obj).__name__}", file=file, line=lineno)
        return RawRecord(fi, lineno, n, reason="invalid_record", error=str(err), raw=raw)
    try:
        record_to_example(obj, file=file, line=lineno)
    except InputError as e:
        return RawRecord(fi, lineno, n, reason="invalid_record", error=str(e), raw=raw)
    return RawRecord(fi, lineno, n, rec=obj)


RawItem = tuple[int, int, bytes, bool]  # (file index, line, raw bytes, whole file)


def iter_raw(files: list[Path], stats: dict[str, Any] | None = None) -> Iterator[RawItem]:
    """``(file_index, line, raw_bytes, whole_file)`` for every record of ``files``, in order, unparsed.

    ``.txt``/``.md`` files are one record each (``whole_file`` True); anything else is JSONL, one
    record per non-blank line (trailing CR/LF removed). Blank lines and empty files are counted in
    ``stats``. Parsing is left to :func:`parse_raw`, so it can run in worker processes.
    """
    stats = stats if stats is not None else {}
    for fi, file in enumerate(files):
        if file.suffix in TEXT_SUFFIXES:
            raw = file.read_bytes().removeprefix(UTF8_BOM)
            if not raw.strip():
                stats.setdefault("empty_files", []).append(str(file))
                continue
            yield fi, 1, raw, True
            continue
        n = 0
        with open(file, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if lineno == 1:
                    raw = raw.removeprefix(UTF8_BOM)
                if not raw.strip():
                    stats["blank_lines"] = stats.get("blank_lines", 0) + 1
                    continue
                yield fi, lineno, raw.rstrip(b"\r\n"), False
                n += 1
        if n == 0:
            stats.setdefault("empty_files", []).append(str(file))


def parse_raw(file: Path, fi: int, lineno: int, raw: bytes, whole_file: bool) -> RawRecord:
    """One record from :func:`iter_raw` parsed and validated (a reject with its reason if bad)."""
    if not whole_file:
        return _parse_line(file, fi, lineno, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        err = InputError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})", file=file, line=line)
        return RawRecord(fi, line, len(raw), reason="unreadable", error=str(err), raw=raw)
    return RawRecord(fi, 1, len(raw), rec={"text": text})


def iter_records(
    files: list[Path], stats: dict[str, Any] | None = None, want: Callable[[int, bytes], bool] | None = None
) -> Iterator[RawRecord]:
    """Records of every file, in order; the n-th record yielded has record id n.

    ``want(record_id, raw)`` returning False skips parsing that record: it is yielded with
    ``rec``, ``reason`` and ``raw`` all None (a pass that needs only some records reads the rest
    at the cost of a line read).
    """
    for rid, (fi, lineno, raw, whole) in enumerate(iter_raw(files, stats)):
        if want is not None and not want(rid, raw):
            yield RawRecord(fi, 1 if whole else lineno, len(raw))
        else:
            yield parse_raw(files[fi], fi, lineno, raw, whole)
