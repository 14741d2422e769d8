"""Diversity metrics, hand-worked."""

from __future__ import annotations

import numpy as np

from forgetless.curate.config import CurateConfig
from forgetless.curate.diversity import distinct_n, length_stats, prefix, skeleton, templates, top_ngrams, warnings


def test_distinct_n_hand_worked() -> None:
    toks = [["a", "b", "a", "b"], ["a", "b", "c"]]
    # unigrams: 7 tokens, 3 distinct; bigrams: ab ba ab | ab bc = 5, 3 distinct;
    # 4-grams: only "a b a b" (n-grams never cross records).
    assert distinct_n(toks, 1) == 3 / 7
    assert distinct_n(toks, 2) == 3 / 5
    assert distinct_n(toks, 4) == 1.0
    assert distinct_n([], 2) == 0.0


def test_top_ngrams_count_records_not_occurrences() -> None:
    toks = [["a", "b", "a", "b"], ["a", "b", "c"], ["x", "y"]]
    assert top_ngrams(toks, 2) == [{"ngram": "a b", "records": 2, "share": round(2 / 3, 4)}]


def test_skeleton_and_prefix() -> None:
    toks = "order 1042 was placed by anna for 3 units of soap".split()
    assert skeleton(toks) == "_ was _ by _ for _ of _"
    assert prefix(toks) == "order 0 was"


def test_templates_flag_shared_skeleton() -> None:
    texts = [f"order {i} was placed by n{i} for {i} units of s{i}" for i in range(8)] + ["a completely different sentence here"] * 2
    toks = [t.split() for t in texts]
    found = templates(toks, texts, CurateConfig(template_min_share=0.5, template_min_count=5))
    assert {(t["kind"], t["pattern"], t["records"]) for t in found} == {("skeleton", "_ was _ by _ for _ of _", 8), ("prefix", "order 0 was", 8)}
    div = {"templates": found, "sample_records": 10}
    w = warnings(div, {"largest_share": 0.0}, CurateConfig(dominance_share=0.7))
    assert len(w) == 2 and all(x.startswith("DOMINATED BY ONE PATTERN: 80% of records (8 of 10 sampled)") for x in w)
    w = warnings(div, {"largest_share": 0.2, "largest_size": 2}, CurateConfig(dominance_share=0.9))
    assert w == ["2 template patterns each cover >= 10% of records; the largest, skeleton '_ was _ by _ for _ of _', covers 80% (8 of 10 sampled)"]


def test_length_stats_hand_worked() -> None:
    s = length_stats(np.array([1, 2, 3, 4, 100]))
    assert s["percentiles"]["median"] == 3 and s["percentiles"]["max"] == 100
    assert s["histogram"] == {"0-7": 4, "64-127": 1}
    assert length_stats(np.array([])) == {"records": 0}
