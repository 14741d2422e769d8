"""The curate stage: clean, filter, deduplicate, flag, mix replay, report; in bounded memory.

Three streaming passes over the input, none of which keeps record texts in memory:

1. **lines**: count, per multi-line record, which lines repeat across records (a count-min sketch,
   fixed size) to find boilerplate headers, footers and navigation;
2. **signatures**: clean each record, apply the quality filters, hash it for exact duplicates and
   MinHash it for near-duplicates (signatures go to temporary files, not RAM), count rare terms;
   then resolve duplicates from sorted hashes and LSH bands;
3. **write**: read the input again, redo the (deterministic) cleaning for kept records, and write
   the curated JSONL (with replay records interleaved), the rejects JSONL and the reports.

Per record, memory holds a few integers (status, line number, length); see ``docs/benchmarks.md``
for measured peak RSS against input size. All outputs are written to temporary files in the output
folder and renamed into place at the end, so an interrupted run leaves the previous outputs intact.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from .. import artifacts
from ..data import expand_paths
from ..errors import ForgetlessError
from ..train.config import DEFAULT_MODEL
from . import dedup
from .clean import CountMinSketch, clean_record, quality_reject, record_lines, record_text, str_hashes, terms, words
from .config import CurateConfig
from .diversity import diversity_report, warnings
from .reader import RawRecord, iter_records
from .replay import count_replay_file, interleave_positions, iter_replay_file, replay_count, self_generated_replay
from .report import render_markdown

# Status codes per record (uint8 array): everything but KEPT is a reject reason.
KEPT = 0
REASONS = [
    "kept",
    "unreadable",
    "invalid_record",
    "empty",
    "too_short",
    "too_long",
    "symbol_ratio",
    "repeated_lines",
    "exact_duplicate",
    "near_duplicate",
]
CODE = {r: i for i, r in enumerate(REASONS)}
SIGNATURE_BATCH = 2048  # records per rensa call: large enough to amortise the call, small in RAM


@dataclass
class CurateResult:
    """Where curate wrote its outputs, and the report it wrote."""

    kept_path: Path
    rejects_path: Path
    report_path: Path
    report_md_path: Path
    report: dict[str, Any]

    @property
    def kept(self) -> int:
        """Records kept (replay excluded)."""
        return int(self.report["counts"]["kept"])

    @property
    def rejected(self) -> int:
        """Records rejected, all reasons."""
        return int(self.report["counts"]["rejected"])


def _progress(console: Console | None) -> Progress:
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


def _cms_width(total_bytes: int) -> int:
    # About one counter per 16 input bytes (a line is rarely shorter), between 64 Ki and 4 Mi
    # counters: 1 MiB to 64 MiB for the 4-row sketch, whatever the input size.
    want = max(1 << 16, min(1 << 22, total_bytes // 16))
    return 1 << (want - 1).bit_length()


class _Pass:
    """One streaming pass over the inputs with a progress bar in bytes."""

    def __init__(self, files: list[Path], progress: Progress, label: str, total: int, stats: dict[str, Any] | None = None) -> None:
        self.files, self.progress, self.stats = files, progress, stats
        self.task = progress.add_task(label, total=total)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for r in iter_records(self.files, self.stats):
            self.progress.advance(self.task, r.nbytes + 1)
            yield r
        self.progress.update(self.task, visible=False)


def _find_boilerplate(files: list[Path], cfg: CurateConfig, progress: Progress, total: int) -> tuple[frozenset[str], int]:
    """Pass 1: lines found in at least the threshold number of multi-line records."""
    cms = CountMinSketch(_cms_width(total))
    candidates: set[str] = set()
    n_records = 0
    for r in _Pass(files, progress, "boilerplate scan", total):
        if r.rec is None:
            continue
        n_records += 1
        lines = set(record_lines(r.rec, cfg))
        if len(lines) < 2:
            continue  # a one-line record repeated elsewhere is a duplicate, not boilerplate
        line_list = list(lines)
        keys = str_hashes(line_list)
        cms.add(keys)
        est = cms.query(keys)
        # Counts only grow, so a line at the lower bound now is a candidate for the final threshold.
        candidates.update(ln for ln, c in zip(line_list, est.tolist()) if c >= cfg.boilerplate_min_docs)
    threshold = max(cfg.boilerplate_min_docs, int(np.ceil(cfg.boilerplate_min_share * n_records)))
    if not candidates:
        return frozenset(), threshold
    cand = list(candidates)
    est = cms.query(str_hashes(cand))
    return frozenset(c for c, e in zip(cand, est.tolist()) if e >= threshold), threshold


# Characters json.dumps leaves raw (ensure_ascii=False) that str.splitlines() and some editors
# treat as line breaks; escaping them keeps "one record per line" true for every reader.
_LINE_BREAKERS = {c: f"\\u{c:04x}" for c in (0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def json_line(rec: dict[str, Any]) -> str:
    """One JSONL line: UTF-8 kept readable, line-breaking characters escaped."""
    return json.dumps(rec, ensure_ascii=False).translate(_LINE_BREAKERS) + "\n"


class _AtomicOut:
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


def run_curate(
    inputs: list[Path],
    out_dir: Path,
    cfg: CurateConfig,
    *,
    console: Console | None = None,
    model_name: str = DEFAULT_MODEL,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> CurateResult:
    """Curate ``inputs`` (files or folders) into ``out_dir``; see the module docstring.

    ``model_name`` is the base model whose own answers make the self-generated replay
    (``cfg.replay == "self"``); the pipeline passes the run's ``model.name``.
    """
    t0 = time.perf_counter()
    files = expand_paths([Path(p) for p in inputs])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(f.stat().st_size for f in files) + 1
    timings: dict[str, float] = {}
    stats: dict[str, Any] = {}

    # Per-record state, a few bytes each: this is what grows with the input, not the texts.
    status = array("B")
    file_of = array("I")
    line_of = array("Q")
    row_of = array("q")  # row in the signature store, -1 for records rejected before dedup
    changed = 0
    row_rec = array("q")  # record id of each signature row
    row_hash = array("Q")
    row_len = array("I")

    bands, rows = dedup.lsh_params(cfg.threshold, cfg.num_perm)
    store = dedup.SignatureStore(cfg.num_perm, bands, rows, dir=out_dir)
    term_cms = CountMinSketch(_cms_width(total)) if cfg.rare_term_max_docs else None
    try:
        with _progress(console) as progress:
            # --- pass 1: boilerplate lines ------------------------------------------------------
            t = time.perf_counter()
            boiler, boiler_threshold = (frozenset(), 0)
            if cfg.boilerplate_min_docs:
                boiler, boiler_threshold = _find_boilerplate(files, cfg, progress, total)
            timings["boilerplate_s"] = time.perf_counter() - t

            # --- pass 2: clean, filter, hash, sign ----------------------------------------------
            t = time.perf_counter()
            batch: list[list[str]] = []
            for rid, r in enumerate(_Pass(files, progress, "clean + sign", total, stats)):
                file_of.append(r.file_index)
                line_of.append(r.line)
                if r.rec is None:
                    status.append(CODE[r.reason or "unreadable"])
                    row_of.append(-1)
                    continue
                clean = clean_record(r.rec, cfg, boiler)
                changed += clean != r.rec
                text = record_text(clean)
                toks = words(text)
                bad = quality_reject(text, len(toks), cfg)
                if bad is not None:
                    status.append(CODE[bad[0]])
                    row_of.append(-1)
                    continue
                status.append(KEPT)
                row_of.append(len(row_rec))
                row_rec.append(rid)
                row_hash.append(dedup.normalized_hash(toks))
                row_len.append(len(toks))
                if term_cms is not None:
                    term_cms.add(str_hashes(terms(text)))
                if cfg.near_dedup:
                    batch.append(dedup.shingles(toks, cfg.shingle_size))
                    if len(batch) >= SIGNATURE_BATCH:
                        store.append(dedup.minhash_matrix(batch, cfg.num_perm, cfg.seed))
                        batch = []
            if batch:
                store.append(dedup.minhash_matrix(batch, cfg.num_perm, cfg.seed))
            store.close()
            timings["clean_sign_s"] = time.perf_counter() - t

            # --- dedup resolution ---------------------------------------------------------------
            t = time.perf_counter()
            status_np = np.frombuffer(status, dtype=np.uint8).copy()
            rrec = np.frombuffer(row_rec, dtype=np.int64) if len(row_rec) else np.zeros(0, dtype=np.int64)
            n_rows = len(rrec)
            dup_of = np.full(len(status_np), -1, dtype=np.int64)  # record id each duplicate points at
            first = dedup.exact_first(np.frombuffer(row_hash, dtype=np.uint64)) if n_rows else np.zeros(0, dtype=np.int64)
            is_exact = (first != np.arange(n_rows)) if cfg.exact_dedup else np.zeros(n_rows, dtype=bool)
            status_np[rrec[is_exact]] = CODE["exact_duplicate"]
            dup_of[rrec[is_exact]] = rrec[first[is_exact]]
            pi = pj = np.zeros(0, dtype=np.int64)
            n_candidates = 0
            if cfg.near_dedup and n_rows:
                ci, cj = dedup.candidate_pairs(store)
                n_candidates = len(ci)
                sim = dedup.estimate_jaccard(store.signatures(), ci, cj)
                ok = sim >= cfg.threshold
                pi, pj = ci[ok], cj[ok]
                near = dedup.resolve_near(n_rows, pi, pj, is_exact)
                hit = near >= 0
                status_np[rrec[hit]] = CODE["near_duplicate"]
                dup_of[rrec[hit]] = rrec[near[hit]]
                # An exact copy of a record that turned out to be a near-duplicate points at the
                # record actually kept, so "duplicate_of" always names a record in the output.
                moved = is_exact & hit[first]
                dup_of[rrec[moved]] = rrec[near[first[moved]]]
            # Clusters for the report: near-duplicate edges plus each exact duplicate to its first.
            ex = np.nonzero(first != np.arange(n_rows))[0]
            _, sizes = dedup.cluster_sizes(n_rows, np.concatenate([pi, first[ex]]), np.concatenate([pj, ex]))
            top = np.sort(sizes)[::-1][:5] if len(sizes) else np.zeros(0, dtype=np.int64)
            clusters = {
                "largest_size": int(top[0]) if len(top) else 0,
                "largest_share": round(float(top[0]) / n_rows, 4) if len(top) else 0.0,
                "top_sizes": [int(x) for x in top if x > 1],
                "records_in_clusters": int(sizes[sizes > 1].sum()) if len(sizes) else 0,
            }
            timings["dedup_s"] = time.perf_counter() - t

            # --- replay ---------------------------------------------------------------------------
            kept_mask = status_np == KEPT
            n_kept = int(kept_mask.sum())
            lengths = np.frombuffer(row_len, dtype=np.uint32)[np.nonzero(kept_mask[rrec])[0]] if n_rows else np.zeros(0, np.uint32)
            median = float(np.median(lengths)) if len(lengths) else 0.0
            t = time.perf_counter()
            replay_info, replay_iter, n_replay = _prepare_replay(cfg, n_kept, console, model_name, trust_remote_code, revision)
            timings["replay_s"] = time.perf_counter() - t

            # --- pass 3: write ----------------------------------------------------------------
            t = time.perf_counter()
            report_extra = _write_outputs(
                files, out_dir, cfg, progress, total, status_np, dup_of, file_of, line_of, boiler, median,
                term_cms, replay_iter, interleave_positions(n_kept, n_replay),
            )
            timings["write_s"] = time.perf_counter() - t
    finally:
        store.cleanup()

    by_reason = {r: int((status_np == CODE[r]).sum()) for r in REASONS[1:]}
    counts = {
        "records_in": len(status_np),
        "kept": n_kept,
        "rejected": int(len(status_np) - n_kept),
        "rejected_by_reason": by_reason,
        "replay_added": report_extra["replay_written"],
        "written": n_kept + report_extra["replay_written"],
    }
    # The invariant the issue asks for; a mismatch is a bug in this module, not bad input.
    counts["add_up"] = counts["records_in"] == counts["kept"] + counts["rejected"] == n_kept + sum(by_reason.values())
    assert counts["add_up"], counts
    per_file = []
    fo = np.frombuffer(file_of, dtype=np.uint32) if len(file_of) else np.zeros(0, np.uint32)
    for fi, f in enumerate(files):
        m = fo == fi
        per_file.append({"file": str(f), "records": int(m.sum()), "kept": int((m & (status_np == KEPT)).sum())})
    div = report_extra.pop("diversity")
    report = {
        "version": 1,
        "inputs": per_file,
        "counts": counts,
        "empty_files": stats.get("empty_files", []),
        "blank_lines": stats.get("blank_lines", 0),
        "cleaning": {
            "records_changed": changed,
            "boilerplate_threshold_records": boiler_threshold,
            "boilerplate_lines": report_extra.pop("boilerplate"),
        },
        "dedup": {
            "shingle_size": cfg.shingle_size,
            "threshold": cfg.threshold,
            "num_perm": cfg.num_perm,
            "bands": bands,
            "rows_per_band": rows,
            "candidate_pairs": n_candidates,
            "confirmed_pairs": int(len(pi)),
            "clusters": clusters,
        },
        "flags": report_extra.pop("flags"),
        "diversity": div,
        "warnings": warnings(div, clusters, cfg),
        "replay": {**replay_info, "written": report_extra["replay_written"]},
        "timings_s": {k: round(v, 3) for k, v in {**timings, "total_s": time.perf_counter() - t0}.items()},
    }
    from ..io import atomic_write_json, atomic_write_text

    json_path, md_path = out_dir / artifacts.CURATE_REPORT_JSON, out_dir / artifacts.CURATE_REPORT_MD
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report))
    return CurateResult(out_dir / artifacts.CURATED, out_dir / artifacts.CURATE_REJECTS, json_path, md_path, report)


def _prepare_replay(
    cfg: CurateConfig, n_kept: int, console: Console | None, model_name: str, trust_remote_code: bool, revision: str | None
) -> tuple[dict[str, Any], Any, int]:
    """``(report info, iterator of replay records, how many to write)`` for the configured source."""
    want = replay_count(n_kept, cfg.replay_ratio) if cfg.replay != "none" else 0
    info: dict[str, Any] = {"source": cfg.replay, "ratio": cfg.replay_ratio, "requested": want}
    if want == 0:
        return info, iter(()), 0
    if cfg.replay == "file":
        assert cfg.replay_file is not None  # the config validator guarantees it
        available = count_replay_file(cfg.replay_file)
        info["file"] = str(cfg.replay_file)
        records: Any = iter_replay_file(cfg.replay_file)
    else:
        from ..models import load_model, load_tokenizer, weights_fingerprint

        model = load_model(model_name, trust_remote_code=trust_remote_code, revision=revision)
        tok = load_tokenizer(model_name, trust_remote_code=trust_remote_code, revision=revision)
        recs = self_generated_replay(
            model, tok, n=want, max_new_tokens=cfg.replay_max_new_tokens,
            cache_key=weights_fingerprint(model_name, revision=revision), batch_size=cfg.replay_batch_size, console=console,
        )
        available, records = len(recs), iter(recs)
        info["model"] = model_name
    n = min(want, available)
    info["available"] = available
    if n < want:
        info["short_by"] = want - n
    return info, records, n


def _write_outputs(
    files: list[Path],
    out_dir: Path,
    cfg: CurateConfig,
    progress: Progress,
    total: int,
    status: np.ndarray,
    dup_of: np.ndarray,
    file_of: array,
    line_of: array,
    boiler: frozenset[str],
    median: float,
    term_cms: CountMinSketch | None,
    replay_iter: Any,
    replay_at: list[int],
) -> dict[str, Any]:
    """Pass 3: curated JSONL (replay interleaved), rejects JSONL; returns the report parts it measures."""
    kept_out = _AtomicOut(out_dir / artifacts.CURATED)
    rej_out = _AtomicOut(out_dir / artifacts.CURATE_REJECTS)
    rng = random.Random(0)
    sample: list[str] = []
    boiler_counts: dict[str, int] = {}
    flags = {"short": 0, "long": 0, "rare_term": 0}
    flagged_examples: dict[str, list[str]] = {k: [] for k in flags}
    n_kept_seen, replay_written, next_replay = 0, 0, 0
    kept_lengths = array("I")

    def src(rid: int) -> str:
        return f"{files[file_of[rid]]}:{line_of[rid]}"

    def emit_replay() -> None:
        nonlocal next_replay, replay_written
        while next_replay < len(replay_at) and replay_at[next_replay] <= n_kept_seen:
            rec = next(replay_iter, None)
            next_replay += 1
            if rec is not None:
                kept_out.write(rec)
                replay_written += 1

    try:
        for rid, r in enumerate(_Pass(files, progress, "write", total)):
            code = int(status[rid])
            if code != KEPT:
                rej_out.write(_reject(r, REASONS[code], rid, dup_of, src, cfg, boiler))
                continue
            assert r.rec is not None
            emit_replay()
            clean = clean_record(r.rec, cfg, boiler)
            if boiler:
                for ln in record_lines(r.rec, cfg):
                    if ln in boiler:
                        boiler_counts[ln] = boiler_counts.get(ln, 0) + 1
            text = record_text(clean)
            n_words = len(words(text))
            kept_lengths.append(n_words)
            rec_flags = []
            if median and n_words < cfg.flag_short_ratio * median:
                rec_flags.append("short")
            if median and n_words > cfg.flag_long_ratio * median:
                rec_flags.append("long")
            rare: list[str] = []
            if term_cms is not None:
                tlist = sorted(terms(text))
                est = term_cms.query(str_hashes(tlist)).tolist()
                rare = [t for t, c in zip(tlist, est) if c <= cfg.rare_term_max_docs]
                if rare:
                    rec_flags.append("rare_term")
            out = {**clean, "curate_source": src(rid)}
            if rec_flags:
                out["curate_flags"] = rec_flags
                for fl in rec_flags:
                    flags[fl] += 1
                    if len(flagged_examples[fl]) < 5:
                        flagged_examples[fl].append(src(rid) + (f" ({', '.join(rare[:5])})" if fl == "rare_term" else ""))
            if rare:
                out["curate_rare_terms"] = rare[:20]
            kept_out.write(out)
            n_kept_seen += 1
            # Reservoir sample (algorithm R): a uniform sample of kept texts for the diversity metrics.
            if len(sample) < cfg.diversity_sample:
                sample.append(text)
            else:
                k = rng.randrange(n_kept_seen)
                if k < cfg.diversity_sample:
                    sample[k] = text
        emit_replay()
        kept_out.commit()
        rej_out.commit()
    except BaseException:
        kept_out.abort()
        rej_out.abort()
        raise
    lengths = np.frombuffer(kept_lengths, dtype=np.uint32) if len(kept_lengths) else np.zeros(0, np.uint32)
    return {
        "replay_written": replay_written,
        "boilerplate": [{"line": ln, "records": c} for ln, c in sorted(boiler_counts.items(), key=lambda kv: -kv[1])],
        "flags": {"median_words": median, **flags, "examples": flagged_examples},
        "diversity": diversity_report(sample, lengths, cfg),
    }


def _reject(r: RawRecord, reason: str, rid: int, dup_of: np.ndarray, src: Any, cfg: CurateConfig, boiler: frozenset[str]) -> dict[str, Any]:
    """A rejects-file line: why, where, what it duplicated, and the original record (or raw bytes)."""
    out: dict[str, Any] = {"reason": reason, "source": src(rid)}
    if r.rec is None:
        out["detail"] = r.error
        out.update(r.raw_field())
        return out
    if dup_of[rid] >= 0:
        out["duplicate_of"] = src(int(dup_of[rid]))
    else:
        clean = clean_record(r.rec, cfg, boiler)
        text = record_text(clean)
        bad = quality_reject(text, len(words(text)), cfg)
        out["detail"] = bad[1] if bad else reason
    out["record"] = r.rec
    return out


def curate_summary_line(result: CurateResult) -> str:
    """One line for the console: in, kept, rejected per reason, replay."""
    c = result.report["counts"]
    reasons = ", ".join(f"{k} {v}" for k, v in c["rejected_by_reason"].items() if v)
    line = f"curate: {c['records_in']} records in, {c['kept']} kept, {c['rejected']} rejected"
    if reasons:
        line += f" ({reasons})"
    if c["replay_added"]:
        line += f", {c['replay_added']} replay records mixed in"
    return line


def ensure_any_kept(result: CurateResult) -> None:
    """Raise a user error when nothing survived (training on an empty file would fail later, less clearly)."""
    if result.kept == 0:
        raise ForgetlessError(f"curate kept no records; see {result.rejects_path} and {result.report_md_path}")


__all__ = ["CurateResult", "run_curate", "curate_summary_line", "ensure_any_kept"]
