"""Streaming helpers for curate's passes: byte-based progress bars over records, count-min
sketch sizing, and pass 1, the boilerplate scan (see :mod:`forgetless.curate.pipeline`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from .clean import CountMinSketch, record_lines, str_hashes
from .config import CurateConfig
from .reader import RawRecord, iter_records

_PROGRESS_EVERY = 2048  # records between progress-bar updates (an update costs more than a record)


def progress_bar(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console is None,
        transient=True,
    )


def cms_width(total_bytes: int) -> int:
    # About one counter per 16 input bytes (a line is rarely shorter), between 64 Ki and 4 Mi
    # counters: 1 MiB to 64 MiB for the 4-row sketch, whatever the input size.
    want = max(1 << 16, min(1 << 22, total_bytes // 16))
    return 1 << (want - 1).bit_length()


def with_progress(records: Iterator[RawRecord], progress: Progress, label: str, total: int) -> Iterator[RawRecord]:
    """Pass ``records`` through, advancing a byte-based progress bar every few thousand records."""
    task = progress.add_task(label, total=total)
    pending, n = 0, 0
    for r in records:
        pending += r.nbytes + 1
        n += 1
        if n % _PROGRESS_EVERY == 0:
            progress.advance(task, pending)
            pending = 0
        yield r
    progress.update(task, visible=False)


def may_have_lines(rid: int, raw: bytes) -> bool:
    """False when a raw record cannot hold two lines: no newline/CR (escaped or not), no tag."""
    return b"\\n" in raw or b"\n" in raw or b"\\r" in raw or b"<" in raw or b"\\u003c" in raw or b"\\u003C" in raw


def find_boilerplate(files: list[Path], cfg: CurateConfig, progress: Progress, total: int) -> tuple[frozenset[str], int]:
    """Pass 1: lines found in at least the threshold number of records' multi-line texts."""
    cms = CountMinSketch(cms_width(total))
    candidates: set[str] = set()
    n_records = 0
    buf: list[str] = []

    def flush() -> None:
        keys = str_hashes(buf)
        cms.add(keys)
        # Counts only grow, so a line at the lower bound now is a candidate for the final threshold.
        est = cms.query(keys).tolist()
        candidates.update(ln for ln, c in zip(buf, est) if c >= cfg.boilerplate_min_docs)
        buf.clear()

    for r in with_progress(iter_records(files, want=may_have_lines), progress, "boilerplate scan", total):
        n_records += 1
        if r.rec is None:
            continue
        buf.extend(set(record_lines(r.rec, cfg)))  # distinct per record: document frequency
        if len(buf) >= 65536:
            flush()
    flush()
    threshold = max(cfg.boilerplate_min_docs, int(np.ceil(cfg.boilerplate_min_share * n_records)))
    if not candidates:
        return frozenset(), threshold
    cand = list(candidates)
    est = cms.query(str_hashes(cand)).tolist()
    return frozenset(c for c, e in zip(cand, est) if e >= threshold), threshold
