"""Budget-aimed adapter scale: the scale predicted from measured KL, and which checkpoints to try."""

from __future__ import annotations

import pytest

from forgetless.train.calibrate import MIN_SCALE, aimed_scale, scale_candidates


def test_first_guess_assumes_exponent_one_and_a_half() -> None:
    # (0.045 / 0.1) ** (1 / 1.5) = 0.45 ** 0.6667 = 0.58723
    assert aimed_scale(0.1, 0.045) == pytest.approx(0.58723, abs=1e-5)


def test_second_point_fits_the_exponent() -> None:
    # KL(0.58723) = 0.055 measured: p = ln(0.55) / ln(0.58723) = 1.12304, scale = 0.45 ** (1 / 1.12304) = 0.49114
    assert aimed_scale(0.1, 0.045, kl_at_s=0.055, s=0.5872301) == pytest.approx(0.49114, abs=1e-4)


def test_already_inside_keeps_full_scale_and_extremes_are_clamped() -> None:
    assert aimed_scale(0.04, 0.045) == 1.0
    assert aimed_scale(100.0, 0.045) == MIN_SCALE  # 0.00045 ** 0.6667 = 0.0059 < 0.05
    # A second point that did not go down with the scale carries no exponent: back to the first guess.
    assert aimed_scale(0.1, 0.045, kl_at_s=0.1, s=0.5) == pytest.approx(0.58723, abs=1e-5)


def test_candidates_are_outside_and_beat_every_checkpoint_inside() -> None:
    m = "domain/qa_recall"
    trained = [
        {"step": 10, m: 0.10, "general/kl": 0.03, "budget/outside": 0.0},
        {"step": 20, m: 0.20, "general/kl": 0.08, "budget/outside": 1.0},
        {"step": 30, m: 0.05, "general/kl": 0.09, "budget/outside": 1.0},  # scores under step 10, which is inside
        {"step": 40, m: 0.20, "general/kl": 0.07, "budget/outside": 1.0},
        {"step": 50, m: 0.25, "general/kl": 0.12, "budget/outside": 1.0},
    ]
    # Best score first; on a tie the later step.
    assert [h["step"] for h in scale_candidates(trained, m)] == [50, 40, 20]
