"""Tokenization, prompt masking and packing, against hand-worked token ids and labels."""

from __future__ import annotations

import torch

from forgetless.data import Example
from forgetless.testing import tiny_model, tiny_tokenizer
from forgetless.train.dataset import IGNORE, PackedCollator, Tokenized, build_dataset, chunk, pack, tokenize_example, ReplaySampler

X = IGNORE
# Word ids in forgetless.testing's vocabulary (checked in test_vocab_ids below).
IM_START, IM_END, USER, ASSISTANT, SYSTEM = 2, 3, 5, 6, 4
WHAT, IS, ZORVANEX, A, DRUG, MADE, BY, ACME = 14, 13, 41, 9, 40, 51, 52, 53


def test_vocab_ids() -> None:
    tok = tiny_tokenizer()
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "system", "user", "assistant"]) == [IM_START, IM_END, SYSTEM, USER, ASSISTANT]
    assert tok.convert_tokens_to_ids("what is zorvanex a drug made by acme".split()) == [WHAT, IS, ZORVANEX, A, DRUG, MADE, BY, ACME]


def test_chat_loss_only_on_assistant_turn() -> None:
    tok = tiny_tokenizer()
    ex = Example(messages=[{"role": "user", "content": "what is zorvanex"}, {"role": "assistant", "content": "a drug made by acme"}])
    t = tokenize_example(tok, ex)
    assert t.input_ids == [IM_START, USER, WHAT, IS, ZORVANEX, IM_END, IM_START, ASSISTANT, A, DRUG, MADE, BY, ACME, IM_END]
    # Prompt, role header and generation prompt masked; the answer and its end-of-turn are learned.
    assert t.labels == [X, X, X, X, X, X, X, X, A, DRUG, MADE, BY, ACME, IM_END]


def test_multi_turn_and_system_prompt() -> None:
    tok = tiny_tokenizer()
    ex = Example(
        messages=[
            {"role": "user", "content": "what is zorvanex"},
            {"role": "assistant", "content": "a drug"},
            {"role": "user", "content": "by what"},
            {"role": "assistant", "content": "acme"},
        ]
    )
    t = tokenize_example(tok, ex, system_prompt="you are a cat")
    learned = [i for i, l in zip(t.input_ids, t.labels) if l != X]
    assert learned == [A, DRUG, IM_END, ACME, IM_END]
    assert t.input_ids[:3] == [IM_START, SYSTEM, tok.convert_tokens_to_ids("you")]


def test_text_example_learns_every_token_plus_eos() -> None:
    tok = tiny_tokenizer()
    t = tokenize_example(tok, Example(text="zorvanex is a drug"))
    assert t.input_ids == [ZORVANEX, IS, A, DRUG, IM_END] and t.labels == t.input_ids


def test_chunk_keeps_every_token() -> None:
    t = Tokenized(list(range(10)), list(range(10)))
    parts = chunk(t, 4)
    assert [p.input_ids for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_pack_boundaries_positions_and_labels() -> None:
    a = Tokenized([10, 11, 12], [10, 11, 12])
    b = Tokenized([20, 21], [X, 21])
    c = Tokenized([30, 31, 32, 33], [30, 31, 32, 33])
    rows = pack([a, b, c], max_length=6)
    # First-fit decreasing: c (4) opens row 1, a (3) does not fit -> row 2, b (2) fits into row 1.
    assert [r.input_ids for r in rows] == [[30, 31, 32, 33, 20, 21], [10, 11, 12]]
    assert rows[0].position_ids == [0, 1, 2, 3, 0, 1]
    # The first token of each packed example is never a target (no loss across the boundary).
    assert rows[0].labels == [X, 31, 32, 33, X, 21]


def test_replay_rows_are_separate() -> None:
    rows = pack([Tokenized([1, 2], [1, 2]), Tokenized([3, 4], [3, 4], replay=True)], max_length=8)
    assert [(r.input_ids, r.replay) for r in rows] == [([1, 2], False), ([3, 4], True)]


def test_packed_attention_matches_separate_sequences() -> None:
    """Packing changes nothing a model computes: logits equal those of each example run alone.

    Needs use_cache=False (the trainer passes it): with a KV cache transformers does not derive
    the block-diagonal mask from position ids.
    """
    model = tiny_model()
    seqs = [[9, 40, 51, 52], [41, 13, 9], [14, 13, 41, 3, 5]]
    rows = pack([Tokenized(s, s) for s in seqs], max_length=12)
    assert len(rows) == 1
    batch = PackedCollator(pad_id=0)([{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids, "replay": r.replay} for r in rows])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for s in sorted(seqs, key=len, reverse=True):  # packing order: longest first
            alone = model(input_ids=torch.tensor([s])).logits[0]
            torch.testing.assert_close(packed[start : start + len(s)], alone, atol=1e-5, rtol=1e-4)
            start += len(s)


def test_collator_pads_as_separate_segment() -> None:
    batch = PackedCollator(pad_id=0)(
        [
            {"input_ids": [5, 6, 7], "labels": [X, 6, 7], "position_ids": [0, 1, 2], "replay": False},
            {"input_ids": [8], "labels": [X], "position_ids": [0], "replay": True},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[X, 6, 7], [X, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert batch["replay"].tolist() == [False, True]


def test_build_dataset_counts_tokens() -> None:
    tok = tiny_tokenizer()
    ds = build_dataset(tok, [Example(text="zorvanex is a drug"), Example(text="a drug")], max_length=16)
    assert len(ds) == 1 and ds.num_tokens == 5 + 3


def test_build_dataset_rotates_the_replay_pool() -> None:
    # 3 domain rows of 5 tokens (15 tokens); replay 0.25 of all tokens -> 15 / 3 = 5 replay tokens,
    # so one draw takes 2 of the 10 three-token replay examples (6 tokens). Rotating keeps all 10
    # as a pool and trains 2 of them an epoch.
    tok = tiny_tokenizer()
    dom = [Example(text="zorvanex is a drug")] * 3
    pool = [Example(text="a drug")] * 10
    once = build_dataset(tok, dom, max_length=16, packing=False, replay=pool, replay_ratio=0.25)
    assert (len(once), once.replay_per_epoch, once.epoch_rows, once.replay_rows, once.num_tokens) == (5, None, 5, 2, 15 + 6)
    rot = build_dataset(tok, dom, max_length=16, packing=False, replay=pool, replay_ratio=0.25, replay_rotate=True)
    assert [r.replay for r in rot.rows] == [False] * 3 + [True] * 10
    assert (rot.replay_per_epoch, rot.epoch_rows, rot.replay_rows, rot.replay_pool_rows, rot.num_tokens) == (2, 5, 2, 10, 15 + 6)
    # A pool no bigger than one epoch's draw (2 examples for 15 replay tokens): nothing to rotate.
    small = build_dataset(tok, dom, max_length=16, packing=False, replay=pool[:2], replay_ratio=0.5, replay_rotate=True)
    assert (small.replay_per_epoch, small.epoch_rows, small.replay_rows) == (None, 3 + 5, 5)


def test_rotating_replay_trains_every_pool_row_once_before_any_twice() -> None:
    # 6 domain rows (0-5) and a pool of 10 replay rows (6-15), 4 of them an epoch.
    flags = [False] * 6 + [True] * 10
    for spread in (False, True):
        s = ReplaySampler(flags, 2, seed=1, spread=spread, replay_per_epoch=4)
        epochs = []
        for e in range(5):
            s.set_epoch(e)
            order = list(s)
            assert len(order) == len(s) == 10
            assert sorted(i for i in order if i < 6) == list(range(6))  # every domain row, once
            epochs.append([i for i in order if i >= 6])
            if spread:  # 4 replay rows over 5 batches of 2: at most one in each
                assert all(sum(flags[i] for i in b) <= 1 for b in _batches(order, 2))
        assert all(len(set(r)) == 4 for r in epochs)
        # Epochs 0-1 take 8 distinct rows; epoch 2 takes the last 2 and starts the cycle again.
        assert len(set(epochs[0] + epochs[1])) == 8
        assert set(epochs[0] + epochs[1] + epochs[2]) == set(range(6, 16))
        assert set(epochs[2]) >= set(range(6, 16)) - set(epochs[0] + epochs[1])
        assert set(epochs[2]) - (set(range(6, 16)) - set(epochs[0] + epochs[1])) <= set(epochs[0])
        s.set_epoch(1)
        assert [i for i in s if i >= 6] == epochs[1]  # deterministic in (seed, epoch): a resume replays it
    try:
        ReplaySampler(flags, 2, replay_per_epoch=11)
    except ValueError as e:
        assert "[1, 10]" in str(e)
    else:
        raise AssertionError("a replay_per_epoch above the pool was accepted")


# --- a base model without a chat template: the plain Question:/Answer: frame -----------------


def _plain_ids(tok, words: str) -> list[int]:
    return tok.convert_tokens_to_ids(words.split())


def test_plain_frame_chat_learns_answers_and_final_eos() -> None:
    tok = tiny_tokenizer(plain=True)
    assert tok.chat_template is None
    ex = Example(messages=[{"role": "user", "content": "what is zorvanex"}, {"role": "assistant", "content": "a drug made by acme"}])
    t = tokenize_example(tok, ex)
    # <bos> Question: what is zorvanex \n Answer: a drug made by acme <eos>
    assert t.input_ids == _plain_ids(tok, "<bos> Question: what is zorvanex Answer: a drug made by acme") + [IM_END]
    assert t.labels == [X] * 6 + [A, DRUG, MADE, BY, ACME, IM_END]


def test_plain_frame_multi_turn_with_system_prompt() -> None:
    tok = tiny_tokenizer(plain=True)
    ex = Example(messages=[
        {"role": "user", "content": "what is zorvanex"}, {"role": "assistant", "content": " a drug "},
        {"role": "user", "content": "by what"}, {"role": "assistant", "content": "acme"},
    ])  # fmt: skip
    t = tokenize_example(tok, ex, system_prompt="you are a cat")
    assert t.input_ids[:6] == _plain_ids(tok, "<bos> System: you are a cat")
    # Each answer is learned; only the last is closed by EOS (the frame's next line follows the others).
    assert [i for i, l in zip(t.input_ids, t.labels) if l != X] == [A, DRUG, ACME, IM_END]


def test_plain_frame_matches_evaluation_prompt_and_answer() -> None:
    """Training text and evaluation's prompt + answer ids are the same tokens, so a model trained
    on the frame is scored on what it learned."""
    from forgetless.evaluate.scoring import answer_ids, chat_prompt_ids

    tok = tiny_tokenizer(plain=True)
    ex = Example(messages=[{"role": "user", "content": "what is zorvanex"}, {"role": "assistant", "content": "a drug"}])
    t = tokenize_example(tok, ex)
    assert chat_prompt_ids(tok, "what is zorvanex") + answer_ids(tok, "a drug") == t.input_ids


def _batches(order: list[int], b: int) -> list[list[int]]:
    return [order[i : i + b] for i in range(0, len(order), b)]


def test_replay_spread_gives_every_batch_its_share() -> None:
    # 18 replay rows among 59 at batch 4 (the quillmark run): 15 batches, 18/15 = 1.2 per batch,
    # so every batch holds 1 or 2 replay rows, where a shuffle leaves about a quarter with none.
    flags = [i % 59 < 18 for i in range(59)]
    s = ReplaySampler(flags, 4, seed=3)
    order = list(s)
    assert sorted(order) == list(range(59))  # a permutation: nothing dropped or repeated
    counts = [sum(flags[i] for i in b) for b in _batches(order, 4)]
    assert len(counts) == 15 and sum(counts) == 18
    assert all(c in (1, 2) for c in counts)
    assert order == list(ReplaySampler(flags, 4, seed=3))  # deterministic in (seed, epoch)
    s.set_epoch(1)
    assert list(s) != order and sorted(s) == list(range(59))


def test_replay_spread_edge_cases() -> None:
    # Fewer replay rows than batches: each batch gets at most one. More replay than domain, with a
    # short last batch: each batch's share of its size, rounded (7/10 of 4, 4, 2: 2, 3, 2 rows).
    # All replay / none: a plain permutation.
    few = [i < 2 for i in range(12)]  # 3 batches of 4, 2 replay rows
    assert [sum(few[i] for i in b) for b in _batches(list(ReplaySampler(few, 4)), 4)] in ([1, 1, 0], [1, 0, 1], [0, 1, 1])
    many = [i >= 3 for i in range(10)]  # 7 replay, 3 domain, batches 4 + 4 + 2
    order = list(ReplaySampler(many, 4))
    assert sorted(order) == list(range(10))
    assert sorted(sum(many[i] for i in b) for b in _batches(order, 4)[:2]) == [2, 3]
    assert sum(many[i] for i in order[8:]) == 2 and len(order[8:]) == 2
    for flags in ([True] * 5, [False] * 5):
        assert sorted(ReplaySampler(flags, 2)) == list(range(5))
