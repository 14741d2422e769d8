"""Shared-prompt choice scoring and the one-call general suites, on the tiny in-memory model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from forgetless.evaluate.scoring import (
    choice_scores,
    continuation_scores,
    decode_greedy,
    generate_greedy,
    generate_greedy_until,
    iter_continuation_logprobs,
)
from forgetless.evaluate.suites import IN_LOOP_LIMITS, SUITES, flatten_scores, general_suite_scores, suite_items
from forgetless.testing import tiny_model, tiny_tokenizer


# Prompts share a 2-token prefix (like a chat template's system turn) and differ in length;
# choices differ in length; one prompt is a single token (no shared prefix possible).
ITEMS = [
    ([5, 6, 7, 8, 9], [[10], [11, 12, 13], [14, 15]]),
    ([5, 6], [[16, 17], [18]]),
    ([5, 6, 7, 8, 9, 10, 11, 12], [[13, 14, 15, 16], [20]]),
    ([7], [[8, 9]]),
]


@torch.no_grad()
def _from_scratch(model: torch.nn.Module, prompt: list[int], cont: list[int]) -> torch.Tensor:
    """Log-softmax rows predicting ``cont``: one unpadded forward pass of prompt + continuation."""
    logits = model(input_ids=torch.tensor([prompt + cont])).logits[0]
    return F.log_softmax(logits[len(prompt) - 1 : len(prompt) + len(cont) - 1], dim=-1)


def test_continuation_logprobs_equal_one_pass_per_pair() -> None:
    model = tiny_model()
    pairs = [(p, c) for p, cs in ITEMS for c in cs] + [([5, 6, 7], [])]  # an empty continuation too
    for batch_size in (1, 3, len(pairs)):
        seen = []
        for i, lp in iter_continuation_logprobs(model, pairs, batch_size=batch_size):
            seen.append(i)
            want = _from_scratch(model, *pairs[i])
            assert lp.shape == want.shape
            assert torch.allclose(lp, want, atol=1e-4), (batch_size, i)
        assert sorted(seen) == list(range(len(pairs)))


def test_decode_greedy_matches_transformers_generate() -> None:
    tok, model = tiny_tokenizer(), tiny_model()
    # Shared 2-token prefix, different lengths, a 1-token prompt.
    prompts = [[5, 6, 7, 8, 9], [5, 6], [5, 6, 7, 8, 9, 10, 11, 12], [7]]
    for p in prompts:
        want = model.generate(input_ids=torch.tensor([p]), max_new_tokens=7, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(p) :].tolist()
        (got,) = decode_greedy(model, [p], max_new_tokens=7, eos_id=None)
        assert got == want
        assert decode_greedy(model, prompts, max_new_tokens=7, eos_id=None)[prompts.index(p)] == want
    # A row stops at its EOS (kept) while the others go on; `finished` stops a row early.
    free = decode_greedy(model, prompts, max_new_tokens=7, eos_id=None)
    eos = free[0][2]
    stopped = decode_greedy(model, prompts, max_new_tokens=7, eos_id=eos)
    for row, g in zip(stopped, free):
        assert row == (g[: g.index(eos) + 1] if eos in g else g)
    two = decode_greedy(model, prompts, max_new_tokens=7, eos_id=None, finished=lambda i, new: i == 1 and len(new) == 2)
    assert two[1] == free[1][:2] and two[0] == free[0]
    assert generate_greedy(model, tok, prompts, max_new_tokens=7, batch_size=2) == [
        (g[: g.index(tok.eos_token_id) + 1] if tok.eos_token_id in g else g) for g in free
    ]


def test_choice_scores_equal_scoring_each_pair_from_scratch() -> None:
    model = tiny_model()
    items = ITEMS
    expected = [(float(_from_scratch(model, p, c).gather(1, torch.tensor(c)[:, None]).sum()), len(c)) for p, cs in items for c in cs]
    got = continuation_scores(model, [(p, c) for p, cs in items for c in cs])
    assert [n for _, n in got] == [n for _, n in expected]
    assert [a for a, _ in got] == pytest.approx([a for a, _ in expected], abs=1e-4)
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


def _tiny_gemma3(softcap: float | None) -> torch.nn.Module:
    """A 2-layer Gemma 3 (q_norm/k_norm, a sliding-window and a full layer), soft-capped logits.

    The window (16) is wider than any padded test row: inside it, padding is masked as usual.
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=70, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=softcap,
        max_position_embeddings=64, pad_token_id=0, eos_token_id=3, bos_token_id=2,
    )  # fmt: skip
    return Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_per_item_projection_on_gemma3_and_lora_equals_full_forward(softcap: float | None) -> None:
    """Scorers project the trunk's hidden states themselves: soft-capping and a LoRA wrapper must
    give the numbers of the model's own forward pass."""
    from peft import LoraConfig, get_peft_model

    model = _tiny_gemma3(softcap)
    lora = get_peft_model(_tiny_gemma3(softcap), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    pairs = [(p, c) for p, cs in ITEMS for c in cs]
    for m in (model, lora.eval()):
        for i, lp in iter_continuation_logprobs(m, pairs, batch_size=3):
            assert torch.allclose(lp, _from_scratch(m, *pairs[i]), atol=1e-4), i
        got = [s for row in choice_scores(m, ITEMS, batch_size=2) for s in row]
        want = [(float(_from_scratch(m, p, c).gather(1, torch.tensor(c)[:, None]).sum()), len(c)) for p, cs in ITEMS for c in cs]
        assert [a for a, _ in got] == pytest.approx([a for a, _ in want], abs=1e-4)
