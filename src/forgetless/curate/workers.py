"""Pass 2 of curate (clean, filter, hash, sign) on chunks of records, inline or in worker processes.

Pass 2 is ~80% of curate's time and every record is independent, so it is split into chunks of
raw records that worker processes turn into compact results; the main process only reads lines,
appends the results in input order and writes the spill file. The same :class:`Pass2` code runs
inline when there is one worker, so both paths give byte-identical outputs.

Everything a worker hashes must hash the same in every process: the exact-duplicate hash is
blake2b and the term hashes are :func:`~forgetless.curate.clean.word_hashes` (Python's ``hash``
is salted per process). Workers are started with ``spawn``: the parent may hold torch's threads or
a progress-bar thread, which ``fork`` does not copy safely.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import dedup
from .clean import clean_record, quality_reject, record_text, word_hashes, words_and_terms
from .config import CurateConfig
from .output import json_line
from .reader import RawItem, parse_raw

CHUNK_RECORDS = 512  # records per task: amortises a task's pickling and a rensa call
CHUNK_BYTES = 1 << 20  # ...or fewer, so a chunk of huge lines stays small in RAM
# Below this much input the workers' start-up (~0.5 s each: a fresh interpreter importing numpy
# and rensa) costs more than they save.
PARALLEL_MIN_BYTES = 8 << 20


@dataclass
class ChunkResult:
    """Pass 2's output for one chunk of records, in input order."""

    codes: bytes  # status code per record: ``kept`` (0) or a reject reason's code
    hashes: np.ndarray  # uint64, per kept record: normalized-text hash (exact duplicates)
    lengths: np.ndarray  # uint32, per kept record: words
    spill: str  # JSON lines of the kept records: the cleaned record and its term candidates
    signatures: np.ndarray | None  # [kept, num_perm] uint32 MinHash signatures (None: near dedup off)
    term_hashes: np.ndarray  # uint64, one per distinct term candidate of each kept record
    removed: list[str]  # boilerplate line keys removed, once per record that had them
    changed: int  # records that cleaning changed
    nbytes: int  # input bytes covered (for the progress bar)


class Pass2:
    """Cleans, filters, hashes and signs a chunk of raw records (see the module docstring)."""

    def __init__(self, files: list[Path], cfg: CurateConfig, boiler: frozenset[str], with_terms: bool, codes: dict[str, int]) -> None:
        self.files, self.cfg, self.boiler, self.with_terms, self.codes = files, cfg, boiler, with_terms, codes

    def __call__(self, items: list[RawItem]) -> ChunkResult:
        cfg, kept_code = self.cfg, self.codes["kept"]
        codes = bytearray()
        hashes: list[int] = []
        lengths: list[int] = []
        spill: list[str] = []
        batch: list[list[str]] = []
        terms: list[str] = []
        removed: list[str] = []
        changed = 0
        nbytes = 0
        for fi, lineno, raw, whole in items:
            nbytes += len(raw) + 1
            r = parse_raw(self.files[fi], fi, lineno, raw, whole)
            if r.rec is None:
                codes.append(self.codes[r.reason or "unreadable"])
                continue
            gone: list[str] = []
            clean = clean_record(r.rec, cfg, self.boiler, gone)
            if gone:
                removed.extend(set(gone))  # the report counts records, not occurrences
            changed += clean != r.rec
            text = record_text(clean)
            toks, rec_terms = words_and_terms(text, self.with_terms)
            bad = quality_reject(text, len(toks), cfg)
            if bad is not None:
                codes.append(self.codes[bad[0]])
                continue
            codes.append(kept_code)
            hashes.append(dedup.normalized_hash(toks))
            lengths.append(len(toks))
            terms.extend(rec_terms)
            spill.append(json_line({"r": clean, "t": sorted(rec_terms)}))
            batch.append(toks)
        sig = dedup.shingle_hash_matrix(batch, cfg.shingle_size, cfg.num_perm, cfg.seed) if cfg.near_dedup else None
        return ChunkResult(
            codes=bytes(codes),
            hashes=np.array(hashes, dtype=np.uint64),
            lengths=np.array(lengths, dtype=np.uint32),
            spill="".join(spill),
            signatures=sig,
            term_hashes=word_hashes(terms),
            removed=removed,
            changed=changed,
            nbytes=nbytes,
        )


def chunks(items: Iterable[RawItem], max_records: int = CHUNK_RECORDS, max_bytes: int = CHUNK_BYTES) -> Iterator[list[RawItem]]:
    """Consecutive runs of at most ``max_records`` records and about ``max_bytes`` bytes."""
    buf: list[RawItem] = []
    size = 0
    for it in items:
        buf.append(it)
        size += len(it[2])
        if len(buf) >= max_records or size >= max_bytes:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


def resolve_workers(requested: int, total_bytes: int) -> int:
    """Worker processes for pass 2: ``requested``, or (0) one per usable core for inputs large
    enough to repay the start-up; 1 means inline."""
    if requested > 0:
        return requested
    if total_bytes < PARALLEL_MIN_BYTES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


_worker: Pass2 | None = None


def _init(files: list[Path], cfg: CurateConfig, boiler: frozenset[str], with_terms: bool, codes: dict[str, int]) -> None:
    global _worker
    _worker = Pass2(files, cfg, boiler, with_terms, codes)


def _run(items: list[RawItem]) -> ChunkResult:
    assert _worker is not None, "worker not initialised"
    return _worker(items)


def run_pass2(work: Pass2, items: Iterable[RawItem], workers: int) -> Iterator[ChunkResult]:
    """Chunk results in input order, computed inline (``workers`` <= 1) or by a process pool.

    At most ``2 * workers`` chunks are in flight, so memory does not grow with the input (a plain
    ``Pool.imap`` reads its whole input ahead).
    """
    if workers <= 1:
        for c in chunks(items):
            yield work(c)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(work.files, work.cfg, work.boiler, work.with_terms, work.codes)) as pool:
        pending: deque = deque()
        for c in chunks(items):
            pending.append(pool.apply_async(_run, (c,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
