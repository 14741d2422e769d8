"""A fixed, stratified subset of the domain sets for in-loop evaluation.

Scoring every held-out item at every checkpoint makes evaluation cost grow with the user's eval
set: 180 QA + 180 MC items took 64-200 s per evaluation on CPU, more than half of a run. In the
loop, a fixed-size subset is enough to steer and to pick a checkpoint; the full sets are scored
once, on the selected checkpoint (with their bootstrap intervals).

The subset is drawn once per run (seeded) and is the same at every evaluation, so curves compare
like with like. It is stratified by the fields that name a record's kind (``split``, e.g. facts
seen in training Q&A vs only in documents, and ``attribute``), so a small subset keeps the mix
of the full set instead of, by chance, leaving out the hard kind.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from .domain import DomainData

# Record fields that define a stratum, in order; records without any fall in one stratum.
STRATA_FIELDS: tuple[str, ...] = ("split", "attribute")


def stratum(record: Any) -> tuple[str, ...]:
    """The stratum of a record: the values of its :data:`STRATA_FIELDS` that it has."""
    if not isinstance(record, dict):
        return ()
    return tuple(f"{f}={record[f]}" for f in STRATA_FIELDS if f in record)


def allocate(sizes: dict[tuple[str, ...], int], n: int) -> dict[tuple[str, ...], int]:
    """Items per stratum for a subset of ``n``: proportional, rounded by largest remainder.

    Ties in the remainder go to the larger stratum, then to the stratum that sorts first, so the
    allocation does not depend on dict order.
    """
    total = sum(sizes.values())
    exact = {k: n * s / total for k, s in sizes.items()}
    out = {k: int(v) for k, v in exact.items()}
    left = n - sum(out.values())
    order = sorted(sizes, key=lambda k: (-(exact[k] - out[k]), -sizes[k], k))
    for k in order[:left]:
        out[k] += 1
    return out


def stratified_subset(records: list[Any], n: int, *, seed: int) -> list[int]:
    """Indices (ascending) of a stratified random subset of ``n`` records; all of them if ``n`` is
    0 or at least ``len(records)``. The same ``seed`` always gives the same subset."""
    if n <= 0 or n >= len(records):
        return list(range(len(records)))
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[stratum(r)].append(i)
    counts = allocate({k: len(v) for k, v in groups.items()}, n)
    picked: list[int] = []
    for key in sorted(groups):
        # One stream per stratum: adding a stratum elsewhere does not reshuffle this one.
        rng = random.Random(f"{seed}:{'|'.join(key)}")
        picked.extend(rng.sample(groups[key], counts[key]))
    return sorted(picked)


def subset_domain(domain: DomainData, n: int, *, seed: int) -> DomainData:
    """The domain sets cut to at most ``n`` items each (QA, MC and text), stratified and fixed."""
    return DomainData(
        qa=[domain.qa[i] for i in stratified_subset(domain.qa, n, seed=seed)],
        mc=[domain.mc[i] for i in stratified_subset(domain.mc, n, seed=seed)],
        text=[domain.text[i] for i in stratified_subset(domain.text, n, seed=seed)],
    )
