"""Batched model primitives every suite is built from: chat prompts, greedy generation, and the
log-probabilities a model gives to a continuation.

All functions take token ids so callers can cache prompts, sort by length (less padding) and
reuse a prompt across several continuations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def chat_prompt_ids(tok: PreTrainedTokenizerBase, user: str, *, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat prompt, ending where the assistant's answer starts."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if tok.chat_template:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]
    # Base models without a template: a plain "Question/Answer" frame.
    return tok(f"Question: {user}\nAnswer:", add_special_tokens=True)["input_ids"]


def answer_ids(tok: PreTrainedTokenizerBase, answer: str, *, with_eos: bool = True) -> list[int]:
    """Token ids of an assistant answer as it follows a chat prompt (optionally closed by EOS)."""
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id] if with_eos and tok.eos_token_id is not None else ids


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    # Longest first: batches of similar length waste less padding, and an out-of-memory
    # error (if any) shows up on the first batch rather than the last.
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for s in range(0, len(order), batch_size):
        yield order[s : s + batch_size]


@torch.no_grad()
def iter_continuation_logprobs(
    model: PreTrainedModel,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 16,
    pad_id: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """For each ``(prompt_ids, continuation_ids)`` yield ``(index, logprobs)``.

    ``logprobs`` has shape ``[len(continuation), vocab]``: row ``j`` is the model's log-softmax
    distribution for continuation token ``j`` given the prompt and the tokens before it. Items come
    out in length-sorted order, each exactly once.
    """
    dev = _device(model)
    lengths = [len(p) + len(c) for p, c in pairs]
    for idx in _length_sorted_batches(lengths, batch_size):
        width = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = list(pairs[i][0]) + list(pairs[i][1])
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        for row, i in enumerate(idx):
            p, c = len(pairs[i][0]), len(pairs[i][1])
            # Logits at position t predict token t+1: the continuation is predicted by p-1 .. p+c-2.
            sl = logits[row, p - 1 : p + c - 1].float()
            yield i, F.log_softmax(sl, dim=-1)


def continuation_scores(
    model: PreTrainedModel,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 16,
    pad_id: int = 0,
) -> list[tuple[float, int]]:
    """Sum of log-probabilities and token count of each continuation given its prompt."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    for i, lp in iter_continuation_logprobs(model, pairs, batch_size=batch_size, pad_id=pad_id):
        target = torch.tensor(list(pairs[i][1]), device=lp.device)
        out[i] = (float(lp.gather(1, target[:, None]).sum()), len(target))
    return out


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[list[int]]:
    """Greedy continuations (token ids, EOS included when produced) for each prompt, batched."""
    dev = _device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[int]] = [[] for _ in prompts]
    for idx in _length_sorted_batches([len(p) for p in prompts], batch_size):
        width = max(len(prompts[i]) for i in idx)
        # Left padding: every row's last real token sits at the same position, so new tokens line up.
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(prompts[i])
            ids[row, width - n :] = torch.tensor(list(prompts[i]))
            mask[row, width - n :] = 1
        gen = model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id) + 1]
            out[i] = new
    return out
