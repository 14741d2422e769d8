"""The curate stage: clean, filter, deduplicate, flag, mix replay, report; in bounded memory.

Three streaming passes over the input, none of which keeps record texts in memory:

1. **boilerplate scan** (:mod:`forgetless.curate.scan`): count which lines of multi-line texts
   recur across records (a fixed-size count-min sketch) to find headers, footers and navigation.
   Records whose raw JSON line cannot contain a line break are skipped without being parsed.
2. **clean + sign**: clean each record, apply the quality filters, hash it for exact duplicates,
   MinHash it for near-duplicates (signatures go to temporary files) and count its rare-term
   candidates; cleaned candidates are spilled to a temporary JSONL file. This pass runs in
   worker processes for inputs over 8 MiB (:mod:`forgetless.curate.workers`). Duplicates are then
   resolved from sorted hashes and LSH bands (see :mod:`forgetless.curate.dedup`).
3. **write**: read the input again, parsing only rejected records (to keep their original form),
   stream kept records from the spill file with their flags, interleave replay records, write the
   reports (:mod:`forgetless.curate.output`).

Per record, RAM holds a few integers (status, file, line, length, hash); ``docs/benchmarks.md``
has measured peak RSS against input size. Outputs are written under temporary names in the output
folder and renamed at the end, so an interrupted run leaves earlier outputs intact.
"""

from __future__ import annotations

import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from .. import artifacts
from ..data import expand_paths
from ..errors import ForgetlessError
from ..io import atomic_write_json, atomic_write_text
from ..model_config import DEFAULT_MODEL
from . import dedup
from .clean import CountMinSketch
from .config import CurateConfig
from .diversity import diversity_report, warnings
from .output import WriteState, json_line, write_outputs
from .reader import RawItem, iter_raw, iter_records
from .replay import count_replay_file, interleave_positions, iter_replay_file, replay_count, self_generated_replay
from .report import render_markdown
from .scan import cms_width, find_boilerplate, progress_bar, with_progress
from .workers import Pass2, resolve_workers, run_pass2

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


def _track_positions(items: Iterator[RawItem], file_of: array, line_of: array) -> Iterator[RawItem]:
    """Pass raw records through, recording each one's file and line (pass 2's results carry only
    status codes; the write pass needs to find every record again)."""
    for it in items:
        file_of.append(it[0])
        line_of.append(it[1])
        yield it


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
    row_rec = array("q")  # per candidate row (record that passed the filters): its record id
    row_hash = array("Q")  # normalized-text hash
    row_len = array("I")  # length in words
    boiler_counts: Counter[str] = Counter()
    changed = 0

    bands, rows = dedup.lsh_params(cfg.threshold, cfg.num_perm)
    store = dedup.SignatureStore(cfg.num_perm, bands, rows, dir=out_dir)
    term_cms = CountMinSketch(cms_width(total)) if cfg.rare_term_max_docs else None
    spill_path = store.tmp / "candidates.jsonl"
    try:
        with progress_bar(console) as progress:
            # --- pass 1: boilerplate lines ------------------------------------------------------
            t = time.perf_counter()
            boiler, boiler_threshold = (frozenset(), 0)
            if cfg.boilerplate_min_docs:
                boiler, boiler_threshold = find_boilerplate(files, cfg, progress, total)
            timings["boilerplate_s"] = time.perf_counter() - t

            # --- pass 2: clean, filter, hash, sign, spill (in worker processes when large) ---------
            t = time.perf_counter()
            work = Pass2(files, cfg, boiler, term_cms is not None, CODE)
            n_workers = resolve_workers(cfg.workers, total)
            task = progress.add_task(f"clean + sign ({n_workers} worker{'s' if n_workers > 1 else ''})", total=total)
            with open(spill_path, "w", encoding="utf-8") as spill:
                for res in run_pass2(work, _track_positions(iter_raw(files, stats), file_of, line_of), n_workers):
                    first = len(status)
                    status.frombytes(res.codes)
                    kept_at = [first + i for i, c in enumerate(res.codes) if c == KEPT]
                    row_rec.extend(kept_at)
                    row_hash.extend(res.hashes.tolist())
                    row_len.extend(res.lengths.tolist())
                    spill.write(res.spill)
                    if res.signatures is not None and len(res.signatures):
                        store.append(res.signatures)
                    if term_cms is not None:
                        term_cms.add(res.term_hashes)
                    boiler_counts.update(res.removed)
                    changed += res.changed
                    progress.advance(task, res.nbytes)
            progress.update(task, visible=False)
            store.close()
            timings["clean_sign_s"] = time.perf_counter() - t

            # --- dedup resolution ---------------------------------------------------------------
            t = time.perf_counter()
            status_np = np.frombuffer(status, dtype=np.uint8).copy() if len(status) else np.zeros(0, np.uint8)
            dup_of, clusters, n_candidates, n_confirmed = _resolve_duplicates(store, status_np, row_rec, row_hash, cfg)
            timings["dedup_s"] = time.perf_counter() - t

            # --- replay ---------------------------------------------------------------------------
            rrec = np.frombuffer(row_rec, dtype=np.int64) if len(row_rec) else np.zeros(0, np.int64)
            lengths = np.frombuffer(row_len, dtype=np.uint32) if len(row_len) else np.zeros(0, np.uint32)
            kept_rows = status_np[rrec] == KEPT if len(rrec) else np.zeros(0, bool)
            n_kept = int((status_np == KEPT).sum())
            median = float(np.median(lengths[kept_rows])) if kept_rows.any() else 0.0
            t = time.perf_counter()
            replay_info, replay_iter, n_replay = _prepare_replay(cfg, n_kept, console, model_name, trust_remote_code, revision)
            timings["replay_s"] = time.perf_counter() - t

            # --- pass 3: write ------------------------------------------------------------------
            t = time.perf_counter()
            st = WriteState(
                files=files, status=status_np, reasons=REASONS, dup_of=dup_of, file_of=file_of, line_of=line_of,
                lengths=lengths, median=median, boiler=boiler, term_cms=term_cms, replay_iter=replay_iter,
                replay_at=interleave_positions(n_kept, n_replay),
            )
            want: Callable[[int, bytes], bool] = lambda rid, raw: status_np[rid] != KEPT  # noqa: E731 - parse rejects only
            with open(spill_path, encoding="utf-8") as spill:
                write_outputs(with_progress(iter_records(files, want=want), progress, "write", total), spill, out_dir, cfg, st)
            timings["write_s"] = time.perf_counter() - t
            t = time.perf_counter()
            kept_lengths = np.frombuffer(st.kept_lengths, dtype=np.uint32) if len(st.kept_lengths) else np.zeros(0, np.uint32)
            div = diversity_report(st.sample, kept_lengths, cfg)
            timings["diversity_s"] = time.perf_counter() - t
    finally:
        store.cleanup()

    by_reason = {r: int((status_np == CODE[r]).sum()) for r in REASONS[1:]}
    counts: dict[str, Any] = {
        "records_in": len(status_np),
        "kept": n_kept,
        "rejected": int(len(status_np) - n_kept),
        "rejected_by_reason": by_reason,
        "replay_added": st.replay_written,
        "written": n_kept + st.replay_written,
    }
    # The invariant the issue asks for; a mismatch is a bug in this module, not bad input.
    counts["add_up"] = counts["records_in"] == counts["kept"] + counts["rejected"] == n_kept + sum(by_reason.values())
    assert counts["add_up"], counts
    fo = np.frombuffer(file_of, dtype=np.uint32) if len(file_of) else np.zeros(0, np.uint32)
    per_file = [
        {"file": str(f), "records": int((fo == fi).sum()), "kept": int(((fo == fi) & (status_np == KEPT)).sum())}
        for fi, f in enumerate(files)
    ]
    report = {
        "version": 1,
        "inputs": per_file,
        "counts": counts,
        "empty_files": stats.get("empty_files", []),
        "blank_lines": stats.get("blank_lines", 0),
        "cleaning": {
            "records_changed": changed,
            "boilerplate_threshold_records": boiler_threshold,
            "boilerplate_lines": [{"line": ln, "records": c} for ln, c in boiler_counts.most_common()],
        },
        "dedup": {
            "shingle_size": cfg.shingle_size,
            "threshold": cfg.threshold,
            "num_perm": cfg.num_perm,
            "bands": bands,
            "rows_per_band": rows,
            "candidate_pairs": n_candidates,
            "confirmed_pairs": n_confirmed,
            "clusters": clusters,
        },
        "flags": {"median_words": median, **st.flags, "examples": st.flag_examples},
        "diversity": div,
        "warnings": warnings(div, clusters, cfg),
        "replay": {**replay_info, "written": st.replay_written},
        "pass2_workers": n_workers,
        "timings_s": {k: round(v, 3) for k, v in {**timings, "total_s": time.perf_counter() - t0}.items()},
    }
    json_path, md_path = out_dir / artifacts.CURATE_REPORT_JSON, out_dir / artifacts.CURATE_REPORT_MD
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report))
    return CurateResult(out_dir / artifacts.CURATED, out_dir / artifacts.CURATE_REJECTS, json_path, md_path, report)


def _resolve_duplicates(
    store: dedup.SignatureStore, status: np.ndarray, row_rec: array, row_hash: array, cfg: CurateConfig
) -> tuple[np.ndarray, dict[str, Any], int, int]:
    """Mark exact and near duplicates in ``status``; return ``(dup_of, clusters, candidates, confirmed)``."""
    rrec = np.frombuffer(row_rec, dtype=np.int64) if len(row_rec) else np.zeros(0, dtype=np.int64)
    n_rows = len(rrec)
    dup_of = np.full(len(status), -1, dtype=np.int64)  # record id each duplicate points at
    first = dedup.exact_first(np.frombuffer(row_hash, dtype=np.uint64)) if n_rows else np.zeros(0, dtype=np.int64)
    is_exact = (first != np.arange(n_rows)) if cfg.exact_dedup else np.zeros(n_rows, dtype=bool)
    status[rrec[is_exact]] = CODE["exact_duplicate"]
    dup_of[rrec[is_exact]] = rrec[first[is_exact]]
    pi = pj = np.zeros(0, dtype=np.int64)
    n_candidates = 0
    if cfg.near_dedup and n_rows:
        ci, cj = dedup.candidate_pairs(store)
        n_candidates = len(ci)
        ok = dedup.estimate_jaccard(store, ci, cj) >= cfg.threshold
        pi, pj = ci[ok], cj[ok]
        near = dedup.resolve_near(n_rows, pi, pj, is_exact)
        hit = near >= 0
        status[rrec[hit]] = CODE["near_duplicate"]
        dup_of[rrec[hit]] = rrec[near[hit]]
        # An exact copy of a record that turned out to be a near-duplicate points at the record
        # actually kept, so "duplicate_of" always names a record in the output.
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
    return dup_of, clusters, n_candidates, int(len(pi))


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


