"""The in-loop domain subset: stratified, seeded, and the same at every evaluation."""

from __future__ import annotations

from collections import Counter

from forgetless.evaluate.domain import DomainData
from forgetless.evaluate.subset import allocate, stratified_subset, stratum, subset_domain


def records() -> list[dict]:
    # 12 "seen" and 6 "doc_only" questions, two attributes each: 4 strata of 6, 6, 3, 3.
    out = []
    for i in range(18):
        split = "qa_seen" if i < 12 else "doc_only"
        out.append({"question": f"q{i}", "answer": "a", "split": split, "attribute": "class" if i % 2 else "condition"})
    return out


def test_allocation_is_proportional_with_largest_remainders() -> None:
    # 10 of 18 items: exact shares 3.33, 3.33, 1.67, 1.67 -> 3, 3, 1, 1 plus the 2 largest
    # remainders (0.67, to the two small strata).
    sizes = {("a",): 6, ("b",): 6, ("c",): 3, ("d",): 3}
    assert allocate(sizes, 10) == {("a",): 3, ("b",): 3, ("c",): 2, ("d",): 2}
    assert allocate(sizes, 18) == sizes
    assert sum(allocate({("x",): 7, ("y",): 2}, 4).values()) == 4


def test_subset_keeps_the_mix_of_the_full_set() -> None:
    recs = records()
    idx = stratified_subset(recs, 12, seed=0)
    assert len(idx) == 12 and idx == sorted(idx) and len(set(idx)) == 12
    by = Counter(stratum(recs[i]) for i in idx)
    # 12 of 18 = 2/3 of each stratum exactly: 4, 4, 2, 2.
    assert by == {("split=qa_seen", "attribute=condition"): 4, ("split=qa_seen", "attribute=class"): 4,
                  ("split=doc_only", "attribute=condition"): 2, ("split=doc_only", "attribute=class"): 2}  # fmt: skip


def test_subset_is_fixed_by_its_seed() -> None:
    recs = records()
    assert stratified_subset(recs, 9, seed=3) == stratified_subset(recs, 9, seed=3)
    picks = {tuple(stratified_subset(recs, 9, seed=s)) for s in range(6)}
    assert len(picks) > 1  # the seed does choose


def test_no_limit_or_a_large_one_keeps_everything() -> None:
    recs = records()
    assert stratified_subset(recs, 0, seed=0) == list(range(18))
    assert stratified_subset(recs, 50, seed=0) == list(range(18))
    assert stratified_subset([{"question": "q"}] * 5, 2, seed=0) == sorted(stratified_subset([{"question": "q"}] * 5, 2, seed=0))


def test_subset_domain_cuts_each_set() -> None:
    recs = records()
    mc = [{**r, "choices": ["x", "y"], "answer": 0} for r in recs[:4]]
    d = subset_domain(DomainData(qa=recs, mc=mc), 6, seed=0)
    assert len(d.qa) == 6 and len(d.mc) == 4 and d.text == []
    assert Counter(r["split"] for r in d.qa) == {"qa_seen": 4, "doc_only": 2}
