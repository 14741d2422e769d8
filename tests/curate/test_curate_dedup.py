"""Exact and near-duplicate detection: hand-worked units, then a planted corpus end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from forgetless.curate import dedup
from forgetless.curate.config import CurateConfig
from forgetless.curate.pipeline import run_curate
from forgetless.curate.synthetic import planted_corpus


def test_shingles_hand_worked() -> None:
    assert dedup.shingles(["a", "b", "c", "d"], 2) == ["a b", "b c", "c d"]
    assert dedup.shingles(["a", "b"], 3) == ["a b"]
    assert dedup.shingles([], 3) == []


def test_normalized_hash_ignores_case_punctuation_spacing() -> None:
    from forgetless.curate.clean import words

    assert dedup.normalized_hash(words("Hello,  World!")) == dedup.normalized_hash(words("hello world"))
    assert dedup.normalized_hash(words("hello world")) != dedup.normalized_hash(words("hello there world"))


def test_exact_first_hand_worked() -> None:
    h = np.array([7, 3, 7, 9, 3, 7], dtype=np.uint64)
    assert dedup.exact_first(h).tolist() == [0, 1, 0, 3, 1, 0]


def test_resolve_near_points_at_kept_records() -> None:
    # 0~1, 1~2 (0 and 2 not similar): 1 is a duplicate of 0; 2's only match (1) was dropped, so 2 is kept.
    # 3~4 but 3 is excluded (an exact duplicate), so 4 is kept.
    pi, pj = np.array([0, 1, 3]), np.array([1, 2, 4])
    excluded = np.array([False, False, False, True, False])
    assert dedup.resolve_near(5, pi, pj, excluded).tolist() == [-1, 0, -1, -1, -1]


def test_cluster_sizes_hand_worked() -> None:
    labels, sizes = dedup.cluster_sizes(5, np.array([0, 1]), np.array([1, 2]))
    assert sorted(sizes.tolist()) == [1, 1, 3]
    assert labels[0] == labels[2] != labels[3]


def test_lsh_candidates_and_jaccard_estimate() -> None:
    base = [f"w{i}" for i in range(60)]
    near = base[:30] + ["x"] + base[31:]  # one substitution
    other = [f"v{i}" for i in range(60)]
    sets = [dedup.shingles(t, 3) for t in (base, near, other)]
    b, r = dedup.lsh_params(0.6, 128)
    assert b * r <= 128
    store = dedup.SignatureStore(128, b, r)
    try:
        store.append(dedup.minhash_matrix(sets, 128, 1))
        store.close()
        ci, cj = dedup.candidate_pairs(store)
        assert (0, 1) in set(zip(ci.tolist(), cj.tolist()))
        sim = dedup.estimate_jaccard(store.signatures(), np.array([0, 0]), np.array([1, 2]))
        # True Jaccard of base/near: 55 shared of 58+3 = 0.90 (3 shingles replaced by 3 new ones).
        assert abs(sim[0] - 55 / 61) < 0.12
        assert sim[1] < 0.1
    finally:
        store.cleanup()
    assert not store.tmp.exists()


def _line(source: str) -> int:
    return int(source.rsplit(":", 1)[1]) - 1


def test_planted_corpus_recall_precision_and_template(tmp_path: Path) -> None:
    corpus = planted_corpus(500, n_exact=40, n_near=160, edits=(1, 2, 4, 6), n_template=100, seed=11)
    src = corpus.write(tmp_path / "planted.jsonl")
    res = run_curate([src], tmp_path / "out", CurateConfig())
    rejects = [json.loads(x) for x in res.rejects_path.read_text().splitlines()]
    dups = [r for r in rejects if r["reason"] in ("exact_duplicate", "near_duplicate")]
    # Every duplicate names a record that is in the curated output.
    kept_sources = {json.loads(x)["curate_source"] for x in res.kept_path.read_text().splitlines()}
    assert all(r["duplicate_of"] in kept_sources for r in dups)

    # Near-duplicates: a planted copy counts as found if it was dropped as a duplicate of its own
    # family (an edit can, rarely, make it an exact copy). Precision: dropped near-duplicates that
    # really are copies of the record they name.
    near = [r for r in dups if r["reason"] == "near_duplicate"]
    found = {_line(r["source"]) for r in dups if corpus.family(_line(r["source"])) == corpus.family(_line(r["duplicate_of"]))}
    recall = len(found & set(corpus.near_of)) / len(corpus.near_of)
    correct = sum(1 for r in near if _line(r["source"]) in corpus.near_of and corpus.family(_line(r["source"])) == corpus.family(_line(r["duplicate_of"])))
    precision = correct / max(1, len(near))
    assert recall >= 0.95, recall
    assert precision >= 0.99, precision
    exact = [r for r in dups if r["reason"] == "exact_duplicate"]
    assert {_line(r["source"]) for r in exact} >= set(corpus.exact_of)

    # No template record is lost as a "duplicate" and the template is flagged.
    assert not {_line(r["source"]) for r in dups} & set(corpus.template_ids)
    tpl = res.report["diversity"]["templates"]
    assert tpl and tpl[0]["records"] >= 90 and "placed by" in tpl[0]["example"]
    assert any("template" in w for w in res.report["warnings"])
    c = res.report["counts"]
    assert c["records_in"] == len(corpus.records) == c["kept"] + c["rejected"]


def test_word_hashes_are_deterministic_and_per_token() -> None:
    a = dedup.word_hashes(["abc", "de", "abc", "é"])
    b = dedup.word_hashes(["de", "abc"])
    assert a[0] == a[2] == b[1] and a[1] == b[0] and len(set(a.tolist())) == 3
    # A fixed value: the same in every process (Python's hash() is salted per process).
    assert int(dedup.word_hashes(["hello", "world"])[0]) == 6900854454345017820
    assert len(dedup.word_hashes([])) == 0


def test_shingle_hash_matrix_estimates_jaccard() -> None:
    base = [f"w{i}" for i in range(80)]
    near = base[:40] + ["x"] + base[41:]
    short = ["a", "b"]
    m = dedup.shingle_hash_matrix([base, near, short, list(short), []], 4, 256, 1)
    # 4-shingles: 77 each, 4 replaced by 4 new ones: Jaccard 73/81 = 0.90.
    assert abs((m[0] == m[1]).mean() - 73 / 81) < 0.08
    assert (m[2] == m[3]).all()  # a record shorter than k is one shingle of all its words
    assert (m[0] == m[2]).mean() < 0.05
    assert (m == dedup.shingle_hash_matrix([base, near, short, list(short), []], 4, 256, 1)).all()
