"""Text metrics with hand-computed values."""

from __future__ import annotations

import math

import pytest

from forgetless.evaluate.metrics import (
    contains_answer,
    exact_match,
    kl_divergence,
    normalize_answer,
    numeric_match,
    parse_number,
    rouge_l,
    token_f1,
)


def test_normalize_and_exact_match() -> None:
    assert normalize_answer("  The Cat, sat!  ") == "cat sat"
    assert exact_match("An apple.", "apple") == 1.0
    assert exact_match("apples", "apple") == 0.0


def test_token_f1_hand_worked() -> None:
    # pred tokens [cat, sat, on, mat], gold [cat, is, on, mat]: 3 common, P = R = 3/4, F1 = 0.75.
    assert token_f1("The cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert contains_answer("It treats Marrowick syndrome.", "marrowick syndrome") == 1.0


def test_rouge_l_hand_worked() -> None:
    # Tokens: pred [the cat sat on the mat] vs gold [the cat is on the mat]; LCS = the cat on the
    # mat (5): P = R = 5/6, F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # pred [a b] vs gold [a b c d]: LCS 2, P = 1, R = 1/2, F = 2/3.
    assert rouge_l("a b", "a b c d") == pytest.approx(2 / 3)
    assert rouge_l("completely different", "nothing shared") == 0.0


def test_parse_number() -> None:
    assert parse_number("7 + 5 = 12\n\nThis is 3") == 12
    assert parse_number("The answer is 16.") == 16
    assert parse_number("100 divided by 4 equals 25.") == 25
    assert parse_number("They have 1,250 stamps") == 1250
    assert parse_number("x = -3.5") == -3.5
    assert parse_number("3, 4 and 5") == 5
    assert parse_number("no idea") is None
    assert numeric_match("so 6 * 4 = 24", 24) == 1.0 and numeric_match("24", 25) == 0.0


def test_kl_on_tiny_distributions() -> None:
    p = [math.log(0.5), math.log(0.5)]
    q = [math.log(0.25), math.log(0.75)]
    # 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3) = 0.143841...
    assert kl_divergence(p, q) == pytest.approx(0.5 * math.log(4 / 3))
    assert kl_divergence(p, p) == 0.0
    # p(x) = 0 terms contribute nothing; q(x) = 0 where p(x) > 0 is infinite.
    assert kl_divergence([0.0, -math.inf], [math.log(0.5), math.log(0.5)]) == pytest.approx(math.log(2))
    assert kl_divergence([math.log(0.5)] * 2, [0.0, -math.inf]) == math.inf
