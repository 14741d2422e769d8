"""Diversity of the curated data: distinct-n, repeated n-grams, templates, lengths.

"Never train on a single pattern distribution": a model fine-tuned on 500 copies of one sentence
frame learns the frame. These numbers make that visible before training, and :func:`warnings`
turns them into plain-language warnings with the numbers in them.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from .clean import words
from .config import CurateConfig

# Function words survive in a record's "skeleton"; every run of other words becomes one slot "_".
# Records produced from one template ("Customer X ordered N units of Y") share a skeleton.
STOPWORDS = frozenset(
    """a an the and or but if then than so of to in on at by for with from as into about over after before
    under between through during without within is are was were be been being am do does did has have had
    it its this that these those there here which who whom whose what when where why how not no yes can could
    will would shall should may might must i you he she we they me him her us them my your his our their
    all any some each every more most other such only own same very just also""".split()
)
SKELETON_TOKENS = 64  # a template shows in its first sentences; long records need not be scanned whole
PREFIX_WORDS = 3
_DIGITS = re.compile(r"\d+")


class _Tokens:
    """The sample's tokens as one flat id array with record offsets (built once, shared by all n)."""

    def __init__(self, token_lists: list[list[str]]) -> None:
        self.lists = token_lists
        flat = [t for toks in token_lists for t in toks]
        # Token ids are their (per-process) string hashes: no vocabulary dict to build.
        self.ids = np.fromiter(map(hash, flat), dtype=np.int64, count=len(flat)).view(np.uint64)
        self.lens = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
        self.doc = np.repeat(np.arange(len(token_lists)), self.lens)
        self.start = np.concatenate([[0], np.cumsum(self.lens)[:-1]]).astype(np.int64) if len(token_lists) else np.zeros(0, np.int64)

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every n-gram as a 64-bit key, with its record and start position (vectorised: a Python
        set of tuples is ~10x slower on a 5k-record sample)."""
        m = len(self.ids) - n + 1
        if m <= 0:
            z = np.zeros(0, dtype=np.int64)
            return z.astype(np.uint64), z, z
        mult = np.uint64(0x9E3779B97F4A7C15)
        k = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for o in range(n):
                k = (k ^ self.ids[o : o + m]) * mult + np.uint64(o + 1)
        ok = self.doc[:m] == self.doc[n - 1 :]  # the n-gram does not cross a record boundary
        pos = np.nonzero(ok)[0]
        return k[ok], self.doc[pos], pos - self.start[self.doc[pos]]


def _as_tokens(token_lists: list[list[str]] | _Tokens) -> _Tokens:
    return token_lists if isinstance(token_lists, _Tokens) else _Tokens(token_lists)


def distinct_n(token_lists: list[list[str]] | _Tokens, n: int) -> float:
    """Distinct n-grams / all n-grams over the records (1.0: no n-gram repeats)."""
    keys, _, _ = _as_tokens(token_lists).ngrams(n)
    if not len(keys):
        return 0.0
    # Sort-based count: numpy's hash-based np.unique is several times slower on 1M uint64 keys.
    srt = np.sort(keys)
    return (1 + int((srt[1:] != srt[:-1]).sum())) / len(keys)


def top_ngrams(token_lists: list[list[str]] | _Tokens, n: int, k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` n-grams found in the most records (at least 2), with the share of records containing each."""
    tk = _as_tokens(token_lists)
    keys, docs, starts = tk.ngrams(n)
    if not len(keys):
        return []
    order = np.lexsort((docs, keys))
    ks, ds = keys[order], docs[order]
    first_in_doc = np.ones(len(ks), dtype=bool)
    first_in_doc[1:] = (ks[1:] != ks[:-1]) | (ds[1:] != ds[:-1])
    uk = ks[first_in_doc]  # sorted by key: one entry per (n-gram, record)
    run_start = np.nonzero(np.concatenate([[True], uk[1:] != uk[:-1]]))[0]
    df = np.diff(np.concatenate([run_start, [len(uk)]]))
    pos_in_order = np.nonzero(first_in_doc)[0][run_start]
    top = np.argsort(-df, kind="stable")[:k]
    m = max(1, len(tk.lists))
    out = []
    for t in top:
        if df[t] < 2:
            break
        i = order[pos_in_order[t]]
        gram = " ".join(tk.lists[int(docs[i])][int(starts[i]) : int(starts[i]) + n])
        out.append({"ngram": gram, "records": int(df[t]), "share": round(int(df[t]) / m, 4)})
    return out


def skeleton(tokens: list[str]) -> str:
    """Function words kept, runs of other words collapsed to ``_`` (numbers are content too)."""
    out: list[str] = []
    for t in tokens[:SKELETON_TOKENS]:
        s = t if t in STOPWORDS else "_"
        if s == "_" and out and out[-1] == "_":
            continue
        out.append(s)
    return " ".join(out)


def prefix(tokens: list[str]) -> str:
    """The first few words with digits masked (``Invoice 1042:`` and ``Invoice 77:`` share one)."""
    return " ".join(_DIGITS.sub("0", t) for t in tokens[:PREFIX_WORDS])


def _groups(keys: list[str], texts: list[str], cfg: CurateConfig, kind: str) -> list[dict[str, Any]]:
    counts = Counter(k for k in keys if k)
    n = max(1, len(keys))
    out = []
    for key, c in counts.most_common(10):
        share = c / n
        if c >= cfg.template_min_count and share >= cfg.template_min_share:
            example = texts[keys.index(key)]
            out.append({"kind": kind, "pattern": key, "records": c, "share": round(share, 4), "example": example[:160]})
    return out


def templates(token_lists: list[list[str]], texts: list[str], cfg: CurateConfig) -> list[dict[str, Any]]:
    """Shared prefixes and skeletons covering at least ``template_min_share`` of the records."""
    # A skeleton with fewer than 4 slots/words says nothing (e.g. "_" for a one-word answer).
    skel = [s if len(s.split()) >= 4 else "" for s in (skeleton(t) for t in token_lists)]
    pre = [prefix(t) if len(t) >= PREFIX_WORDS else "" for t in token_lists]
    found = _groups(skel, texts, cfg, "skeleton") + _groups(pre, texts, cfg, "prefix")
    return sorted(found, key=lambda g: -g["share"])


def length_stats(lengths: np.ndarray) -> dict[str, Any]:
    """Percentiles and a power-of-two histogram of record lengths in words."""
    if len(lengths) == 0:
        return {"records": 0}
    q = np.percentile(lengths, [0, 5, 25, 50, 75, 95, 100])
    edges = [0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, np.inf]
    hist, _ = np.histogram(lengths, bins=edges)
    labels = [f"{int(a)}-{int(b) - 1}" if np.isfinite(b) else f"{int(a)}+" for a, b in zip(edges[:-1], edges[1:])]
    return {
        "records": int(len(lengths)),
        "mean": round(float(lengths.mean()), 1),
        "percentiles": dict(zip(["min", "p5", "p25", "median", "p75", "p95", "max"], [int(x) for x in q])),
        "histogram": {lab: int(h) for lab, h in zip(labels, hist) if h},
    }


def diversity_report(texts: list[str], lengths: np.ndarray, cfg: CurateConfig) -> dict[str, Any]:
    """All diversity metrics on a sample of curated texts (``lengths`` covers every kept record)."""
    toks = [words(t) for t in texts]
    tk = _Tokens(toks)
    return {
        "sample_records": len(texts),
        "distinct_1": round(distinct_n(tk, 1), 4),
        "distinct_2": round(distinct_n(tk, 2), 4),
        "distinct_3": round(distinct_n(tk, 3), 4),
        "top_3grams": top_ngrams(tk, 3),
        "top_5grams": top_ngrams(tk, 5),
        "templates": templates(toks, texts, cfg),
        "lengths": length_stats(lengths),
    }


def warnings(div: dict[str, Any], clusters: dict[str, Any], cfg: CurateConfig) -> list[str]:
    """Plain-language warnings, each with its numbers, for data dominated by one pattern."""
    out = []
    tpl = div.get("templates", [])
    for t in tpl:
        if t["share"] >= cfg.dominance_share:
            out.append(
                f"DOMINATED BY ONE PATTERN: {t['share']:.0%} of records ({t['records']} of {div['sample_records']} sampled) "
                f"share the {t['kind']} '{t['pattern']}', e.g. \"{t['example'][:80]}\""
            )
    if tpl and not out:
        # Below dominance, templates are worth one line (the report lists each), not one per pattern.
        big = tpl[0]
        out.append(
            f"{len(tpl)} template patterns each cover >= {cfg.template_min_share:.0%} of records; the largest, "
            f"{big['kind']} '{big['pattern']}', covers {big['share']:.0%} ({big['records']} of {div['sample_records']} sampled)"
        )
    share = clusters.get("largest_share", 0.0)
    if share >= cfg.dominance_share:
        out.append(
            f"DOMINATED BY ONE PATTERN: the largest near-duplicate cluster held {share:.0%} of the "
            f"deduplicated candidates ({clusters['largest_size']} records) before deduplication"
        )
    return out
