"""Pass 3 of curate: write the curated JSONL (replay interleaved) and the rejects JSONL.

Kept records come back from the cleaned-candidates spill file written in pass 2 (on disk, not in
RAM), so nothing is cleaned twice; rejected records are re-read from the input so the rejects file
holds the original record (or its raw bytes), losslessly.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import artifacts
from ..errors import ForgetlessError
from .clean import CountMinSketch, clean_record, quality_reject, record_text, word_hashes, words
from .config import CurateConfig
from .reader import RawRecord

# Characters json.dumps leaves raw (ensure_ascii=False) that str.splitlines() and some editors
# treat as line breaks; escaping them keeps "one record per line" true for every reader.
_LINE_BREAKERS = {c: f"\\u{c:04x}" for c in (0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}
FLUSH_EVERY = 2048  # kept records buffered so rare-term lookups are one vectorised query


def json_line(rec: dict[str, Any]) -> str:
    """One JSONL line: UTF-8 kept readable, line-breaking characters escaped."""
    s = json.dumps(rec, ensure_ascii=False)
    return (s if s.isascii() else s.translate(_LINE_BREAKERS)) + "\n"


class AtomicOut:
    """A text file written under a temporary name in its final folder, renamed on commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.f: IO[str] = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        """Append one JSON line."""
        self.f.write(json_line(rec))

    def commit(self) -> None:
        """Flush, fsync and rename into place."""
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temporary file."""
        self.f.close()
        Path(self.tmp).unlink(missing_ok=True)


@dataclass
class WriteState:
    """What pass 3 needs from the earlier passes."""

    files: list[Path]
    status: np.ndarray  # per record: 0 kept, else a reason code
    reasons: list[str]
    dup_of: np.ndarray  # per record: record id it duplicates, or -1
    file_of: Any  # array('I') per record
    line_of: Any  # array('Q') per record
    lengths: np.ndarray  # per candidate row: words
    median: float
    boiler: frozenset[str]
    term_cms: CountMinSketch | None
    replay_iter: Iterator[dict[str, Any]]
    replay_at: list[int]
    flags: dict[str, int] = field(default_factory=lambda: {"short": 0, "long": 0, "rare_term": 0})
    flag_examples: dict[str, list[str]] = field(default_factory=lambda: {"short": [], "long": [], "rare_term": []})
    sample: list[str] = field(default_factory=list)
    kept_lengths: array = field(default_factory=lambda: array("I"))  # 4 bytes per kept record
    n_kept_seen: int = 0
    replay_written: int = 0
    next_replay: int = 0

    def src(self, rid: int) -> str:
        """``file:line`` of a record."""
        return f"{self.files[self.file_of[rid]]}:{self.line_of[rid]}"


def write_outputs(
    records: Iterator[RawRecord], candidates: IO[str], out_dir: Path, cfg: CurateConfig, st: WriteState
) -> None:
    """Pass 3 over ``records`` (only rejects parsed) and the candidates spill file, in lockstep."""
    kept_out = AtomicOut(out_dir / artifacts.CURATED)
    rej_out = AtomicOut(out_dir / artifacts.CURATE_REJECTS)
    rng = random.Random(0)
    buf: list[tuple[int, int, dict[str, Any], list[str]]] = []
    kept_code, n_reasons = 0, len(st.reasons)
    candidate_codes = {st.reasons.index("exact_duplicate"), st.reasons.index("near_duplicate"), kept_code}
    row = -1
    try:
        for rid, r in enumerate(records):
            if rid >= len(st.status):
                raise ForgetlessError(f"{st.files[r.file_index]} changed while curate was reading it; run curate again")
            code = int(st.status[rid])
            spill = None
            if code in candidate_codes:
                row += 1
                spill = candidates.readline()
            if code != kept_code:
                assert code < n_reasons
                rej_out.write(_reject(r, st.reasons[code], rid, st, cfg))
                continue
            obj = json.loads(spill)  # type: ignore[arg-type]
            buf.append((rid, row, obj["r"], obj["t"]))
            if len(buf) >= FLUSH_EVERY:
                _flush_kept(buf, kept_out, cfg, st, rng)
        _flush_kept(buf, kept_out, cfg, st, rng)
        _emit_replay(kept_out, st)
        kept_out.commit()
        rej_out.commit()
    except BaseException:
        kept_out.abort()
        rej_out.abort()
        raise


def _emit_replay(out: AtomicOut, st: WriteState) -> None:
    """Write the replay records due at this point of the kept stream."""
    while st.next_replay < len(st.replay_at) and st.replay_at[st.next_replay] <= st.n_kept_seen:
        rec = next(st.replay_iter, None)
        st.next_replay += 1
        if rec is not None:
            out.write(rec)
            st.replay_written += 1


def _flush_kept(buf: list[tuple[int, int, dict[str, Any], list[str]]], out: AtomicOut, cfg: CurateConfig, st: WriteState, rng: random.Random) -> None:
    if not buf:
        return
    rare_sets: list[list[str]] = [[] for _ in buf]
    if st.term_cms is not None:
        all_terms = [t for _, _, _, ts in buf for t in ts]
        est = st.term_cms.query(word_hashes(all_terms)).tolist()
        k = 0
        for i, (_, _, _, ts) in enumerate(buf):
            rare_sets[i] = [t for t, c in zip(ts, est[k : k + len(ts)]) if c <= cfg.rare_term_max_docs]
            k += len(ts)
    for (rid, row, clean, _), rare in zip(buf, rare_sets):
        _emit_replay(out, st)
        n_words = int(st.lengths[row])
        rec_flags = []
        if st.median and n_words < cfg.flag_short_ratio * st.median:
            rec_flags.append("short")
        if st.median and n_words > cfg.flag_long_ratio * st.median:
            rec_flags.append("long")
        if rare:
            rec_flags.append("rare_term")
        rec = {**clean, "curate_source": st.src(rid)}
        if rec_flags:
            rec["curate_flags"] = rec_flags
            for fl in rec_flags:
                st.flags[fl] += 1
                if len(st.flag_examples[fl]) < 5:
                    st.flag_examples[fl].append(st.src(rid) + (f" ({', '.join(rare[:5])})" if fl == "rare_term" else ""))
        if rare:
            rec["curate_rare_terms"] = rare[:20]
        out.write(rec)
        st.kept_lengths.append(n_words)
        st.n_kept_seen += 1
        # Reservoir sample (algorithm R): a uniform sample of kept texts for the diversity metrics.
        if len(st.sample) < cfg.diversity_sample:
            st.sample.append(record_text(clean))
        else:
            j = rng.randrange(st.n_kept_seen)
            if j < cfg.diversity_sample:
                st.sample[j] = record_text(clean)
    buf.clear()


def _reject(r: RawRecord, reason: str, rid: int, st: WriteState, cfg: CurateConfig) -> dict[str, Any]:
    """A rejects-file line: why, where, what it duplicated, and the original record (or raw bytes)."""
    out: dict[str, Any] = {"reason": reason, "source": st.src(rid)}
    if r.rec is None:
        out["detail"] = r.error
        out.update(r.raw_field())
        return out
    if st.dup_of[rid] >= 0:
        out["duplicate_of"] = st.src(int(st.dup_of[rid]))
    else:
        # Rejects are re-cleaned to restate the failed filter; kept records never are.
        text = record_text(clean_record(r.rec, cfg, st.boiler))
        bad = quality_reject(text, len(words(text)), cfg)
        out["detail"] = bad[1] if bad else reason
    out["record"] = r.rec
    return out
