"""Exact and near-duplicate detection in bounded memory.

Near-duplicates: MinHash signatures of word shingles (rensa's Rust ``RMinHash``, computed for a whole
batch of documents in one call: per-document Python hashing is what makes a plain datasketch loop
slow), then LSH banding with the band/row split datasketch's ``MinHashLSH`` would pick for the same
threshold. Instead of an in-memory bucket index (whose size grows with the corpus), signatures and
band hashes go to temporary files and each band is grouped by sorting one column: RAM holds one
band column (8 bytes per record) at a time. Every LSH candidate pair is confirmed on the full
signatures (estimated Jaccard >= threshold) before anything is called a duplicate.

Resolution is greedy in input order: a record is a near-duplicate when it is similar to an earlier
record that was itself kept, and its reject names that record. So "duplicate of" always points at
a record that is in the curated output.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
from rensa import RMinHash

from .clean import word_hashes

# datasketch and scipy are imported where used: pass 2's worker processes import this module
# for the signatures only, and datasketch alone takes ~1 s to import.

# How many earlier members of one LSH bucket each member is compared with. A bucket of k similar
# records would otherwise give k^2/2 pairs; the first few members are the ones greedy resolution
# keeps, so comparing against them finds the same duplicates.
MAX_COMPARE_PER_BUCKET = 16
_FNV_PRIME = np.uint64(0x100000001B3)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)


def shingles(tokens: list[str], k: int) -> list[str]:
    """Word ``k``-shingles of a token list (the whole list as one shingle when it is shorter)."""
    if len(tokens) <= k:
        return [" ".join(tokens)] if tokens else []
    return [" ".join(tokens[i : i + k]) for i in range(len(tokens) - k + 1)]


def normalized_hash(tokens: list[str]) -> int:
    """64-bit hash of a record's word tokens: equal for texts differing only in case, punctuation, spacing."""
    # Not Python's ``hash``: it is salted per process, and pass 2 hashes in worker processes.
    # blake2b costs ~1 us more per record, noise next to the ~300 us the record's cleaning takes.
    return int.from_bytes(hashlib.blake2b(" ".join(tokens).encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=64)  # datasketch integrates numerically: ~0.15 s per call
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows)`` for ``threshold``, chosen by datasketch's optimiser with recall weighted 0.95."""
    # Weighted towards recall: every candidate is confirmed on the full signature afterwards, so
    # a false candidate costs one vector comparison while a missed one is a duplicate kept.
    from datasketch.lsh import _optimal_param

    b, r = _optimal_param(threshold, num_perm, 0.05, 0.95)
    return int(b), int(r)


def minhash_matrix(shingle_sets: list[list[str]], num_perm: int, seed: int) -> np.ndarray:
    """``[len(shingle_sets), num_perm]`` uint32 MinHash signatures, computed in one rensa call."""
    if not shingle_sets:
        return np.zeros((0, num_perm), dtype=np.uint32)
    mat = RMinHash.digest_matrix_from_token_sets(shingle_sets, num_perm=num_perm, seed=seed)
    return np.asarray(mat.to_rows(), dtype=np.uint32)


def shingle_hash_matrix(token_lists: list[list[str]], k: int, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures of word ``k``-shingles, hashed without building shingle strings.

    Equivalent in effect to :func:`minhash_matrix` over :func:`shingles` (a record shorter than
    ``k`` is one shingle of all its words): each word is hashed once, shingle hashes are combined
    in numpy for the whole batch, and rensa signs the flat hash buffer in one call. Joining
    ~150 shingle strings per record in Python would cost more than everything else in the pass.
    """
    n_docs = len(token_lists)
    if n_docs == 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    lens = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=n_docs)
    h = word_hashes([w for t in token_lists for w in t])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    # acc[j][p] combines words p..p+j; built level by level over the whole batch.
    acc = [h]
    with np.errstate(over="ignore"):
        for j in range(1, k):
            prev = acc[-1]
            acc.append((prev[: len(h) - j] * _FNV_PRIME) ^ h[j:])
    docs_full = np.nonzero(lens >= k)[0]
    n_sh = np.where(lens >= k, lens - k + 1, np.minimum(lens, 1))
    offsets = np.zeros(n_docs + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum(n_sh)
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    if len(docs_full):
        # Positions p with p + k - 1 inside the same record, in record order.
        rep = np.repeat(docs_full, n_sh[docs_full])
        within = np.arange(len(rep)) - np.repeat(np.cumsum(n_sh[docs_full]) - n_sh[docs_full], n_sh[docs_full])
        pos = starts[rep] + within
        out[(offsets[rep].astype(np.int64) + within)] = acc[k - 1][pos]
    for d in np.nonzero((lens > 0) & (lens < k))[0]:
        out[int(offsets[d])] = acc[int(lens[d]) - 1][starts[d]]
    mat = RMinHash.digest_matrix_from_flat_token_hashes(out, offsets, num_perm, seed)
    return np.asarray(mat.to_rows(), dtype=np.uint32)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``[n, bands]`` uint64: an FNV-style hash of each band's ``rows`` signature values."""
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            h = np.full(sig.shape[0], _FNV_OFFSET, dtype=np.uint64)
            for c in range(b * rows, (b + 1) * rows):
                h = (h ^ sig[:, c].astype(np.uint64)) * _FNV_PRIME
            out[:, b] = h
    return out


class SignatureStore:
    """Signatures and band hashes appended batch by batch to temporary files (not RAM)."""

    def __init__(self, num_perm: int, bands: int, rows: int, *, dir: str | Path | None = None) -> None:
        self.num_perm, self.bands, self.rows = num_perm, bands, rows
        self.tmp = Path(tempfile.mkdtemp(prefix="forgetless-curate-", dir=dir))
        self._sig = open(self.tmp / "sig.u32", "wb")
        self._band = [open(self.tmp / f"band{b}.u64", "wb") for b in range(bands)]
        self.n = 0

    def append(self, sig: np.ndarray) -> None:
        """Add a batch of signatures (rows in record order)."""
        self._sig.write(np.ascontiguousarray(sig, dtype=np.uint32).tobytes())
        bh = band_hashes(sig, self.bands, self.rows)
        for b, f in enumerate(self._band):
            f.write(np.ascontiguousarray(bh[:, b]).tobytes())
        self.n += sig.shape[0]

    def close(self) -> None:
        """Flush the files; call before reading."""
        for f in [self._sig, *self._band]:
            f.close()

    def signatures(self) -> np.ndarray:
        """Memory-mapped ``[n, num_perm]`` signatures (paged in from disk on demand)."""
        if self.n == 0:
            return np.zeros((0, self.num_perm), dtype=np.uint32)
        return np.memmap(self.tmp / "sig.u32", dtype=np.uint32, mode="r", shape=(self.n, self.num_perm))

    def band(self, b: int) -> np.ndarray:
        """One band's hashes for all records."""
        return np.fromfile(self.tmp / f"band{b}.u64", dtype=np.uint64)

    def cleanup(self) -> None:
        """Delete the temporary files."""
        for f in [self._sig, *self._band]:
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _bucket_pairs(h: np.ndarray, max_compare: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of records sharing a bucket: each member with up to
    ``max_compare`` earlier members of its bucket."""
    order = np.argsort(h, kind="stable")  # stable: ascending record index within a bucket
    hs = h[order]
    new_run = np.ones(len(hs), dtype=bool)
    new_run[1:] = hs[1:] != hs[:-1]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(hs)), 0))
    offset = np.arange(len(hs)) - run_start
    pi, pj = [], []
    for j in range(max_compare):
        m = offset > j
        if not m.any():
            break
        pi.append(order[run_start[m] + j])
        pj.append(order[m])
    if not pi:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(pi).astype(np.int64), np.concatenate(pj).astype(np.int64)


def candidate_pairs(store: SignatureStore, *, max_compare: int = MAX_COMPARE_PER_BUCKET) -> tuple[np.ndarray, np.ndarray]:
    """Distinct LSH candidate pairs ``(i, j)`` with ``i < j`` over all bands."""
    keys = []
    for b in range(store.bands):
        i, j = _bucket_pairs(store.band(b), max_compare)
        keys.append(i * store.n + j)
        # Deduplicate as we go so memory stays at the number of distinct pairs, not pairs x bands.
        if len(keys) > 1:
            keys = [np.unique(np.concatenate(keys))]
    if not keys or store.n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    k = np.unique(np.concatenate(keys))
    return k // store.n, k % store.n


def estimate_jaccard(sig: np.ndarray | SignatureStore, i: np.ndarray, j: np.ndarray, *, chunk: int = 16384) -> np.ndarray:
    """Estimated Jaccard similarity (share of equal MinHash values) for each pair.

    Given a :class:`SignatureStore`, the signature file is mapped afresh for each chunk of pairs
    and unmapped after it, so the pages read stay out of the process's resident memory: RSS
    holds at most one chunk's rows, however large the corpus.
    """
    out = np.empty(len(i), dtype=np.float32)
    for s in range(0, len(i), chunk):
        m = sig.signatures() if isinstance(sig, SignatureStore) else sig
        a, b = np.asarray(m[i[s : s + chunk]]), np.asarray(m[j[s : s + chunk]])
        out[s : s + chunk] = (a == b).mean(axis=1)
        del m
    return out


def exact_first(hashes: np.ndarray) -> np.ndarray:
    """For each record, the index of the first record with the same hash (itself when first)."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(hashes, kind="stable")
    hs = hashes[order]
    new_run = np.ones(len(hs), dtype=bool)
    new_run[1:] = hs[1:] != hs[:-1]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(hs)), 0))
    first = np.empty(len(hashes), dtype=np.int64)
    first[order] = order[run_start]
    return first


def resolve_near(n: int, pi: np.ndarray, pj: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Greedy in input order: ``dup_of[j]`` = the first earlier *kept* record similar to ``j``, else -1.

    ``excluded`` marks records already dropped (exact duplicates); they neither become nor keep
    representatives.
    """
    dup_of = np.full(n, -1, dtype=np.int64)
    if len(pi) == 0:
        return dup_of
    order = np.lexsort((pi, pj))  # by j, then i: the first kept i wins
    for i, j in zip(pi[order].tolist(), pj[order].tolist()):
        if excluded[j] or excluded[i] or dup_of[j] >= 0 or dup_of[i] >= 0:
            continue
        dup_of[j] = i
    return dup_of


def cluster_sizes(n: int, pi: np.ndarray, pj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the similarity graph: ``(labels, sizes)``."""
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(pi), dtype=np.int8), (pi, pj)), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    return labels, np.bincount(labels)
