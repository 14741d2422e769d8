"""Held-out general prompts: the shipped set, and both averages of the KL along long answers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from forgetless.evaluate.drift import load_general_prompts
from forgetless.evaluate.heldout import load_heldout_prompts, summarize


def test_heldout_set_is_apart_from_the_in_loop_prompts() -> None:
    held = load_heldout_prompts()
    loop = load_general_prompts()
    assert len(held) == 48 and len({p["id"] for p in held}) == 48
    assert {p["prompt"].lower() for p in held}.isdisjoint(p["prompt"].lower() for p in loop)
    assert {p["id"] for p in held}.isdisjoint(p["id"] for p in loop)
    # Written apart from the in-loop prompts and from the replay prompts training sees: no prompt
    # shares more than 15% of its word 3-grams with any of them (the closest today: 0.09).
    from importlib import resources

    replay = [json.loads(l)["prompt"] for l in (resources.files("forgetless.curate") / "data" / "replay_prompts.v1.jsonl").read_text().splitlines()]

    def grams(t: str) -> set[tuple[str, ...]]:
        w = t.lower().split()
        return {tuple(w[i : i + 3]) for i in range(len(w) - 2)}

    for h in held:
        for other in [p["prompt"] for p in loop] + replay:
            a, b = grams(h["prompt"]), grams(other)
            assert len(a & b) / len(a | b) < 0.15, (h["prompt"], other)
    # Eight kinds of request, six each, interleaved so a prefix keeps the mix.
    cats = [p["category"] for p in held]
    assert len(set(cats)) == 8 and len(set(cats[:8])) == 8


def test_per_token_and_per_prompt_averages_differ_as_worked_by_hand() -> None:
    # Prompt A: 4 answer tokens of KL 1; prompt B: 1 token of KL 0. Split at 2 tokens.
    per_pos = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.0])]
    d = summarize(per_pos, split_at=2)
    assert d.kl_per_token == pytest.approx(4 / 5)  # every token weighs the same
    assert d.kl_per_prompt == pytest.approx(0.5)  # every prompt weighs the same
    assert d.kl_first == pytest.approx(2 / 3)  # positions 0-1: 1, 1 (A) and 0 (B)
    assert d.kl_rest == pytest.approx(1.0) and d.tokens_rest == 2
    assert (d.prompts, d.tokens) == (2, 5)
    m = d.to_metrics()
    assert m["heldout/kl_per_token_first2"] == d.kl_first and m["heldout/kl_per_token_after2"] == d.kl_rest
    assert m["heldout/kl_per_prompt_lo"] <= 0.5 <= m["heldout/kl_per_prompt_hi"]
    short = summarize([torch.tensor([0.5])], split_at=2)
    assert math.isnan(short.kl_rest) and short.tokens_rest == 0
    assert short.to_metrics()["heldout/kl_per_token_after2"] is None
