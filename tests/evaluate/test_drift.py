"""General drift: coarse-grained KL by hand, caching, and per-category aggregation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from forgetless.evaluate.drift import GeneralReference, build_reference, coarse_kl, general_drift, load_general_prompts
from forgetless.testing import tiny_model, tiny_tokenizer


def test_coarse_kl_by_hand() -> None:
    # Base p = (0.5, 0.3, 0.2) over a 3-token vocab, tuned q = (0.25, 0.25, 0.5); top-2 of p kept.
    p = torch.tensor([[0.5, 0.3]]).log()
    ids = torch.tensor([[0, 1]])
    q = torch.tensor([[0.25, 0.25, 0.5]]).log()
    # Partition {0}, {1}, rest={2}: KL = .5 ln(.5/.25) + .3 ln(.3/.25) + .2 ln(.2/.5)
    expected = 0.5 * math.log(2) + 0.3 * math.log(1.2) + 0.2 * math.log(0.4)
    assert coarse_kl(p, ids, q).item() == pytest.approx(expected, abs=1e-6)


def test_coarse_kl_is_exact_with_full_support() -> None:
    torch.manual_seed(0)
    p = torch.randn(4, 7).log_softmax(-1)
    q = torch.randn(4, 7).log_softmax(-1)
    full = (p.exp() * (p - q)).sum(-1)
    top, ids = p.topk(7, dim=-1)
    torch.testing.assert_close(coarse_kl(top, ids, q), full, atol=1e-5, rtol=1e-5)


def test_coarse_kl_lower_bounds_full_kl() -> None:
    torch.manual_seed(1)
    p = torch.randn(16, 50).log_softmax(-1)
    q = torch.randn(16, 50).log_softmax(-1)
    full = (p.exp() * (p - q)).sum(-1)
    top, ids = p.topk(5, dim=-1)
    assert bool((coarse_kl(top, ids, q) <= full + 1e-6).all())


def test_identical_model_has_zero_drift_and_cache_roundtrip(tmp_path: Path) -> None:
    tok, model = tiny_tokenizer(), tiny_model()
    prompts = [
        {"id": "a", "category": "knowledge", "prompt": "what is the capital of france"},
        {"id": "b", "category": "math", "prompt": "what is two plus two"},
    ]
    ref = build_reference(model, tok, prompts, max_new_tokens=5, topk=4)
    res = general_drift(model, ref)
    assert res.kl == pytest.approx(0.0, abs=1e-6)
    assert set(res.kl_by_category) == {"knowledge", "math"} and res.tokens == sum(len(a) for a in ref.answer_ids)
    ref.save(tmp_path / "r.safetensors")
    again = GeneralReference.load(tmp_path / "r.safetensors")
    assert again.answer_ids == ref.answer_ids and again.categories == ref.categories
    torch.testing.assert_close(torch.cat(again.topk_logprobs), torch.cat(ref.topk_logprobs))
    # A different model drifts from the base reference.
    other = tiny_model(seed=1)
    moved = general_drift(other, again)
    assert moved.kl > 1e-3 and math.isfinite(moved.nll)  # random tiny models are near-uniform: small but clearly non-zero


def test_builtin_prompts_cover_categories() -> None:
    prompts = load_general_prompts()
    cats = {p["category"] for p in prompts}
    assert len(prompts) >= 100 and {"knowledge", "reasoning", "math", "code", "everyday"} <= cats
