"""Benchmark the curate stage against a plain datasketch MinHash-LSH loop, and measure memory.

    .venv/bin/python bench/curate.py                  # 100k docs: ours vs datasketch loop, backends
    .venv/bin/python bench/curate.py --rss 25000 100000 400000   # peak RSS of `run_curate` per size

The corpus is synthetic (``forgetless.curate.synthetic``): ~1 KB documents of random pseudo-words,
3% exact copies and 7% near-duplicates at 1, 2, 4 or 6 word edits, so recall is measured against
known truth. Both sides use the same settings: 4-word shingles, 128 permutations, threshold 0.6.

* **ours**: ``run_curate`` end to end (three passes: boilerplate scan, clean + sign, write; plus
  all reports), wall time including reading and writing.
* **datasketch loop**: the usual recipe: read each line, tokenize, one ``MinHash`` per document
  (``update_batch``), ``MinHashLSH.query`` then ``insert``; a document with any candidate is a
  duplicate. No cleaning, no outputs: the loop does strictly less work than ours.
* **signature backends**: MinHash signatures alone for the same shingles, datasketch
  (``MinHash.bulk``) vs rensa (``RMinHash.digest_matrix_from_token_sets``), each followed by our
  banding + confirmation, to choose the library at equal recall.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from forgetless.curate import dedup
from forgetless.curate.clean import words
from forgetless.curate.config import CurateConfig
from forgetless.curate.pipeline import run_curate
from forgetless.curate.synthetic import PlantedCorpus, planted_corpus


def make_corpus(n_docs: int, seed: int = 0) -> PlantedCorpus:
    """``n_docs`` records: 90% unique, 3% exact copies, 7% near copies."""
    n_exact, n_near = n_docs * 3 // 100, n_docs * 7 // 100
    return planted_corpus(n_docs - n_exact - n_near, n_exact=n_exact, n_near=n_near, seed=seed)


def _line(source: str) -> int:
    return int(source.rsplit(":", 1)[1]) - 1


def recall_precision(corpus: PlantedCorpus, flagged: dict[int, int]) -> tuple[float, float]:
    """Near-duplicate recall, and precision over everything flagged (exact copies count as right)."""
    right = {i for i, j in flagged.items() if (i in corpus.near_of or i in corpus.exact_of) and corpus.family(i) == corpus.family(j)}
    recall = len(right & set(corpus.near_of)) / max(1, len(corpus.near_of))
    return recall, len(right) / max(1, len(flagged))


def bench_ours(path: Path, corpus: PlantedCorpus, cfg: CurateConfig) -> dict:
    t = time.perf_counter()
    res = run_curate([path], path.parent / "out", cfg)
    dt = time.perf_counter() - t
    flagged = {}
    with open(res.rejects_path, encoding="utf-8") as f:
        for raw in f:
            r = json.loads(raw)
            if r.get("duplicate_of"):
                flagged[_line(r["source"])] = _line(r["duplicate_of"])
    rec, prec = recall_precision(corpus, flagged)
    return {"name": "ours (run_curate, end to end)", "seconds": dt, "docs_s": len(corpus.records) / dt, "recall": rec, "precision": prec, "timings": res.report["timings_s"]}


def _near_of(store: dedup.SignatureStore, cfg: CurateConfig) -> np.ndarray:
    """Close ``store`` and resolve near-duplicates: LSH candidates confirmed on the full signature."""
    store.close()
    ci, cj = dedup.candidate_pairs(store)
    ok = dedup.estimate_jaccard(store.signatures(), ci, cj) >= cfg.threshold
    return dedup.resolve_near(store.n, ci[ok], cj[ok], np.zeros(store.n, dtype=bool))


def bench_ours_dedup_only(path: Path, corpus: PlantedCorpus, cfg: CurateConfig) -> dict:
    """Our dedup path doing the same work as the datasketch loop (read, tokenize, sign, LSH,
    resolve), without cleaning, filters, flags or outputs."""
    t = time.perf_counter()
    b, r = dedup.lsh_params(cfg.threshold, cfg.num_perm)
    store = dedup.SignatureStore(cfg.num_perm, b, r, dir=path.parent)
    try:
        batch: list[list[str]] = []
        with open(path, encoding="utf-8") as f:
            for raw in f:
                batch.append(words(json.loads(raw)["text"]))
                if len(batch) >= 2048:
                    store.append(dedup.shingle_hash_matrix(batch, cfg.shingle_size, cfg.num_perm, cfg.seed))
                    batch = []
        if batch:
            store.append(dedup.shingle_hash_matrix(batch, cfg.shingle_size, cfg.num_perm, cfg.seed))
        near = _near_of(store, cfg)
    finally:
        store.cleanup()
    dt = time.perf_counter() - t
    rec, prec = recall_precision(corpus, {i: int(j) for i, j in enumerate(near) if j >= 0})
    return {"name": "ours, dedup core only (same work as loop)", "seconds": dt, "docs_s": len(corpus.records) / dt, "recall": rec, "precision": prec}


def bench_datasketch_loop(path: Path, corpus: PlantedCorpus, cfg: CurateConfig) -> dict:
    from datasketch import MinHash, MinHashLSH

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    flagged: dict[int, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, raw in enumerate(f):
            toks = words(json.loads(raw)["text"])
            m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
            m.update_batch([s.encode("utf-8") for s in dedup.shingles(toks, cfg.shingle_size)])
            hits = lsh.query(m)
            if hits:
                flagged[i] = min(hits)
            else:
                lsh.insert(i, m)
    dt = time.perf_counter() - t
    rec, prec = recall_precision(corpus, flagged)
    return {"name": "plain datasketch MinHash + MinHashLSH loop", "seconds": dt, "docs_s": len(corpus.records) / dt, "recall": rec, "precision": prec}


def _recall_from_signatures(corpus: PlantedCorpus, sig: np.ndarray, cfg: CurateConfig) -> tuple[float, float]:
    b, r = dedup.lsh_params(cfg.threshold, cfg.num_perm)
    store = dedup.SignatureStore(cfg.num_perm, b, r)
    try:
        store.append(sig)
        near = _near_of(store, cfg)
    finally:
        store.cleanup()
    return recall_precision(corpus, {i: int(j) for i, j in enumerate(near) if j >= 0})


def bench_backends(corpus: PlantedCorpus, cfg: CurateConfig) -> list[dict]:
    from datasketch import MinHash

    sets = [dedup.shingles(words(r["text"]), cfg.shingle_size) for r in corpus.records]
    out = []
    t = time.perf_counter()
    ms = MinHash.bulk([[s.encode("utf-8") for s in x] for x in sets], num_perm=cfg.num_perm, seed=cfg.seed)
    sig = np.array([m.hashvalues for m in ms], dtype=np.uint64).astype(np.uint32)
    dt = time.perf_counter() - t
    rec, prec = _recall_from_signatures(corpus, sig, cfg)
    out.append({"name": "signatures: datasketch MinHash.bulk", "seconds": dt, "docs_s": len(sets) / dt, "recall": rec, "precision": prec})
    t = time.perf_counter()
    sig = np.concatenate([dedup.minhash_matrix(sets[s : s + 2048], cfg.num_perm, cfg.seed) for s in range(0, len(sets), 2048)])
    dt = time.perf_counter() - t
    rec, prec = _recall_from_signatures(corpus, sig, cfg)
    out.append({"name": "signatures: rensa RMinHash matrix", "seconds": dt, "docs_s": len(sets) / dt, "recall": rec, "precision": prec})
    return out


def rss_child(path: str) -> None:
    """Run curate on ``path`` in this process and print peak RSS (MiB) and input size as JSON."""
    res = run_curate([Path(path)], Path(path).parent / "out", CurateConfig())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": peak, "records": res.report["counts"]["records_in"], "seconds": res.report["timings_s"]["total_s"]}))


def bench_rss(sizes: list[int]) -> None:
    print(f"{'docs':>9} {'input MiB':>10} {'peak RSS MiB':>13} {'seconds':>8}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "corpus.jsonl"
            # Written in chunks so the benchmark itself does not hold the whole corpus.
            with open(path, "w", encoding="utf-8") as f:
                for k in range(0, n, 50_000):
                    c = make_corpus(min(50_000, n - k), seed=k)
                    f.writelines(json.dumps(r) + "\n" for r in c.records)
            mib = path.stat().st_size / 2**20
            out = subprocess.run([sys.executable, __file__, "--rss-child", str(path)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{n:>9} {mib:>10.0f} {r['peak_rss_mib']:>13.0f} {r['seconds']:>8.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--rss", type=int, nargs="*", help="measure peak RSS for these corpus sizes instead")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--skip-baseline", action="store_true", help="skip the (slow) datasketch loop")
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if args.rss:
        bench_rss(args.rss)
        return
    cfg = CurateConfig()
    corpus = make_corpus(args.docs)
    with tempfile.TemporaryDirectory() as d:
        path = corpus.write(Path(d) / "corpus.jsonl")
        mib = path.stat().st_size / 2**20
        print(f"{len(corpus.records)} docs, {mib:.0f} MiB, {len(corpus.near_of)} planted near-duplicates, {len(corpus.exact_of)} exact copies")
        print(f"settings: {cfg.shingle_size}-word shingles, {cfg.num_perm} permutations, threshold {cfg.threshold}\n")
        rows = [bench_ours(path, corpus, cfg), bench_ours_dedup_only(path, corpus, cfg)]
        if not args.skip_baseline:
            rows.append(bench_datasketch_loop(path, corpus, cfg))
        rows += bench_backends(corpus, cfg)
    print(f"{'method':<45} {'seconds':>8} {'docs/s':>9} {'recall':>7} {'precision':>9}")
    for r in rows:
        print(f"{r['name']:<45} {r['seconds']:>8.1f} {r['docs_s']:>9.0f} {r['recall']:>7.3f} {r['precision']:>9.3f}")
    if not args.skip_baseline:
        base = rows[2]["docs_s"]
        print(f"\nspeed-up vs the datasketch loop: end to end {rows[0]['docs_s'] / base:.1f}x, dedup core {rows[1]['docs_s'] / base:.1f}x")
    print("ours, per phase (s):", rows[0]["timings"])


if __name__ == "__main__":
    main()
