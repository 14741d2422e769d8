"""Honest statistics for evaluation scores: every score carries n and a bootstrap 95% interval.

A suite of 40 items moves by 2.5 points when one answer flips, so "the general score went from
0.55 to 0.50" says nothing on its own. :class:`Score` keeps the per-item values so two models
scored on the same items can be compared *paired* (resampling items, not models), and
:func:`compare` only says "dropped" when the whole interval of the difference is below zero.

The bootstrap is a plain percentile bootstrap over items with a fixed seed: results are
reproducible run to run, and with a few thousand resamples the interval ends move by well under
one point between seeds (measured in tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

N_BOOT = 2000
CONFIDENCE = 0.95

Verdict = Literal["dropped", "improved", "no significant change", "not comparable"]


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean of ``values`` (resampling items with replacement).

    Returns ``(nan, nan)`` for no values. With one distinct value the interval collapses to it.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    # One vectorised draw: n_boot x n indices. For the suites' sizes (<= a few hundred items)
    # this is a few MB and ~10 ms, far cheaper than the model calls that produced the values.
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class Score:
    """A mean over items with its sample size, 95% bootstrap interval and the per-item values."""

    value: float
    n: int
    ci_low: float
    ci_high: float
    values: tuple[float, ...] = field(default=(), repr=False)
    ids: tuple[str, ...] = field(default=(), repr=False)

    def to_dict(self, *, with_values: bool = False) -> dict[str, Any]:
        """JSON-ready dict; per-item values only when asked (they make metrics.jsonl large)."""
        d: dict[str, Any] = {"value": self.value, "n": self.n, "ci_low": self.ci_low, "ci_high": self.ci_high}
        if with_values:
            d["values"] = list(self.values)
            d["ids"] = list(self.ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Score:
        """Inverse of :meth:`to_dict`."""
        return cls(
            value=float(d["value"]),
            n=int(d["n"]),
            ci_low=float(d["ci_low"]),
            ci_high=float(d["ci_high"]),
            values=tuple(float(v) for v in d.get("values", ())),
            ids=tuple(str(i) for i in d.get("ids", ())),
        )

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] n={self.n}"


def make_score(values: Sequence[float], ids: Sequence[str] | None = None, *, seed: int = 0) -> Score:
    """Mean of per-item ``values`` with n and its bootstrap 95% interval."""
    vals = tuple(float(v) for v in values)
    if ids is not None and len(ids) != len(vals):
        raise ValueError(f"{len(ids)} ids for {len(vals)} values")
    lo, hi = bootstrap_ci(vals, seed=seed)
    mean = float(np.mean(vals)) if vals else math.nan
    return Score(mean, len(vals), lo, hi, vals, tuple(ids) if ids is not None else ())


@dataclass(frozen=True)
class Comparison:
    """``b - a`` for two scores, its 95% interval, and the verdict the interval supports."""

    delta: float
    ci_low: float
    ci_high: float
    paired: bool
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"delta": self.delta, "ci_low": self.ci_low, "ci_high": self.ci_high, "paired": self.paired, "verdict": self.verdict}


def compare(a: Score, b: Score, *, higher_is_better: bool = True, n_boot: int = N_BOOT, seed: int = 0) -> Comparison:
    """Difference ``b - a`` with a bootstrap 95% interval and a verdict.

    Paired (resampling the per-item differences) when both scores cover the same items in the
    same order, which is the usual base-vs-tuned case and gives a much tighter interval; otherwise
    the two samples are resampled independently. The verdict is "dropped" only when the whole
    interval lies on the worse side of zero, "improved" when it lies on the better side.
    """
    delta = b.value - a.value
    va, vb = np.asarray(a.values, dtype=np.float64), np.asarray(b.values, dtype=np.float64)
    if va.size == 0 or vb.size == 0:
        return Comparison(delta, math.nan, math.nan, False, "not comparable")
    paired = va.size == vb.size and (a.ids == b.ids if a.ids and b.ids else True)
    if paired:
        lo, hi = bootstrap_ci(vb - va, n_boot=n_boot, seed=seed)
    else:
        rng = np.random.default_rng(seed)
        ma = va[rng.integers(0, va.size, size=(n_boot, va.size))].mean(axis=1)
        mb = vb[rng.integers(0, vb.size, size=(n_boot, vb.size))].mean(axis=1)
        tail = (1.0 - CONFIDENCE) / 2.0
        lo, hi = (float(q) for q in np.quantile(mb - ma, [tail, 1.0 - tail]))
    worse_hi, better_lo = (hi, lo) if higher_is_better else (-lo, -hi)
    if worse_hi < 0:
        verdict: Verdict = "dropped"
    elif better_lo > 0:
        verdict = "improved"
    else:
        verdict = "no significant change"
    return Comparison(delta, lo, hi, paired, verdict)
