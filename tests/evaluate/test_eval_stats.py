"""Bootstrap intervals and verdicts, against hand-worked values."""

from __future__ import annotations

import math

import pytest

from forgetless.evaluate.stats import Score, bootstrap_ci, compare, make_score


def test_bootstrap_of_constant_values_is_a_point() -> None:
    assert bootstrap_ci([0.7] * 10) == (pytest.approx(0.7), pytest.approx(0.7))


def test_bootstrap_of_two_values_hand_worked() -> None:
    # Resampling [0, 1] twice gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5%
    # and 97.5% quantiles of that distribution are 0 and 1.
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_matches_normal_approximation_for_a_large_sample() -> None:
    # 200 successes in 400: the normal interval is 0.5 +- 1.96 * sqrt(0.25 / 400) = 0.5 +- 0.049.
    lo, hi = bootstrap_ci([1.0] * 200 + [0.0] * 200)
    assert lo == pytest.approx(0.451, abs=0.01) and hi == pytest.approx(0.549, abs=0.01)


def test_bootstrap_is_seeded_and_empty_is_nan() -> None:
    vals = [0, 1, 1, 0, 1, 1, 1, 0, 0, 1]
    assert bootstrap_ci(vals) == bootstrap_ci(vals)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_make_score_carries_n_mean_and_values() -> None:
    s = make_score([1, 0, 1, 1], ["a", "b", "c", "d"])
    assert (s.value, s.n, s.values, s.ids) == (0.75, 4, (1.0, 0.0, 1.0, 1.0), ("a", "b", "c", "d"))
    assert s.ci_low <= 0.75 <= s.ci_high
    assert Score.from_dict(s.to_dict(with_values=True)) == s
    assert "values" not in s.to_dict()


def test_compare_needs_the_interval_to_call_a_drop() -> None:
    base = make_score([1.0] * 10 + [0.0] * 10)
    # Two flipped items out of 20: lower point estimate, but the interval straddles zero.
    slightly = make_score([1.0] * 8 + [0.0] * 12)
    c = compare(base, slightly)
    assert c.paired and c.delta == pytest.approx(-0.1)
    assert c.ci_low < 0 < c.ci_high or c.ci_high == 0
    assert c.verdict == "no significant change"
    # Every right answer lost: the whole interval is below zero.
    dropped = compare(base, make_score([0.0] * 20))
    assert dropped.verdict == "dropped" and dropped.ci_high < 0
    assert compare(make_score([0.0] * 20), base).verdict == "improved"


def test_compare_lower_is_better_and_unpaired() -> None:
    a, b = make_score([1.0] * 30), make_score([3.0] * 20)  # e.g. perplexity went up: worse
    c = compare(a, b, higher_is_better=False)
    assert not c.paired and c.delta == pytest.approx(2.0) and c.verdict == "dropped"
    assert compare(a, make_score([]), higher_is_better=False).verdict == "not comparable"
