"""Shared-prompt choice scoring and the one-call general suites, on the tiny in-memory model."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgetless.evaluate.scoring import choice_scores, continuation_scores, generate_greedy_until
from forgetless.evaluate.suites import IN_LOOP_LIMITS, SUITES, flatten_scores, general_suite_scores, suite_items
from forgetless.testing import tiny_model, tiny_tokenizer


def test_choice_scores_equal_scoring_each_pair_from_scratch() -> None:
    model = tiny_model()
    # Prompts share a 2-token prefix (like a chat template's system turn) and differ in length;
    # choices differ in length; one prompt is a single token (no shared prefix possible).
    items = [
        ([5, 6, 7, 8, 9], [[10], [11, 12, 13], [14, 15]]),
        ([5, 6], [[16, 17], [18]]),
        ([5, 6, 7, 8, 9, 10, 11, 12], [[13, 14, 15, 16], [20]]),
        ([7], [[8, 9]]),
    ]
    expected = continuation_scores(model, [(p, c) for p, cs in items for c in cs])
    for batch_size in (1, 2, 4):
        got = [s for row in choice_scores(model, items, batch_size=batch_size) for s in row]
        assert [n for _, n in got] == [n for _, n in expected]
        for (a, _), (b, _) in zip(got, expected):
            assert a == pytest.approx(b, abs=1e-4)


def test_generate_until_cuts_at_the_stop_string() -> None:
    tok, model = tiny_tokenizer(), tiny_model()
    prompt = tok("hello world", add_special_tokens=False)["input_ids"]
    (free,) = generate_greedy_until(model, tok, [prompt], max_new_tokens=6)
    words = free.split()
    assert words, "the tiny model generates some words"
    (cut,) = generate_greedy_until(model, tok, [prompt], max_new_tokens=6, stop_strings=[words[0]])
    assert cut == free[: free.find(words[0])]


def test_general_suite_scores_shapes_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path))
    tok, model = tiny_tokenizer(), tiny_model()
    timings: dict[str, float] = {}
    scores = general_suite_scores(model, tok, limit_per_suite={"math": 3, "code": 2, "knowledge_mc": 4}, batch_size=4, cache_key="tiny-seed0", timings=timings)
    assert set(timings) == set(SUITES)
    assert {k: s.n for k, s in scores.items()} == {
        "math": 3,
        "code": 2,
        "knowledge_mc": 4,
        "knowledge_mc/commonsense": 2,
        "knowledge_mc/knowledge": 2,
    }
    for s in scores.values():
        assert 0.0 <= s.ci_low <= s.value <= s.ci_high <= 1.0
        assert all(v in (0.0, 1.0) for v in s.values)
    # A random tiny model writes no working code and no right sums.
    assert scores["code"].value == 0.0 and scores["math"].value == 0.0
    # Cached under the key: the second call never touches the model.
    again = general_suite_scores(None, tok, limit_per_suite={"math": 3, "code": 2, "knowledge_mc": 4}, cache_key="tiny-seed0")  # type: ignore[arg-type]
    assert again == scores
    flat = flatten_scores(scores)
    assert flat["general/math_n"] == 3 and "general/knowledge_mc/knowledge_lo" in flat


def test_suite_items_prefix_and_errors() -> None:
    assert len(suite_items("knowledge_mc", IN_LOOP_LIMITS["knowledge_mc"])) == IN_LOOP_LIMITS["knowledge_mc"]
    assert {it.kind for it in suite_items("math", 6)} == {"add", "sub", "mul", "word_more", "word_less", "word_groups"}
    with pytest.raises(ValueError, match="unknown"):
        suite_items("poetry")
