"""Batched model primitives every suite is built from: chat prompts, greedy generation, and the
log-probabilities a model gives to a continuation.

All functions take token ids so callers can cache prompts, sort by length (less padding) and
reuse a prompt across several continuations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..lmhead import lm_split
from ..promptformat import PLAIN, prompt_format, render_plain


def chat_prompt_ids(tok: PreTrainedTokenizerBase, user: str, *, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat prompt, ending where the assistant's answer starts."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if tok.chat_template:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]
    # Base models without a template: the plain "Question:/Answer:" frame training uses too.
    return tok(render_plain(msgs), add_special_tokens=True)["input_ids"]


def answer_ids(tok: PreTrainedTokenizerBase, answer: str, *, with_eos: bool = True) -> list[int]:
    """Token ids of an assistant answer as it follows a chat prompt (optionally closed by EOS).

    In the plain frame the answer follows ``Answer:`` after a space, as in training text.
    """
    if prompt_format(tok) == PLAIN:
        answer = " " + answer.lstrip()
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
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """For each ``(prompt_ids, continuation_ids)`` yield ``(index, logprobs)``.

    ``logprobs`` has shape ``[len(continuation), vocab]``: row ``j`` is the model's log-softmax
    distribution for continuation token ``j`` given the prompt and the tokens before it. Items come
    out in length-sorted order, each exactly once.

    Two savings over one plain forward pass per padded batch, same numbers up to float rounding:
    the prefix every prompt of a batch shares (the chat template's system turn, 24 of SmolLM2's
    ~37 prompt tokens) runs once (:func:`_prefix_cache`), and the vocabulary projection runs only
    at the positions that predict a continuation token, one item at a time
    (:func:`forgetless.lmhead.lm_split`): a batch never holds ``batch x length x vocab`` logits, which at Gemma's
    262k vocabulary is 1 GB for 16 answers of 64 tokens.
    """
    dev = _device(model)
    split = lm_split(model)
    lengths = [len(p) + len(c) for p, c in pairs]
    for idx in _length_sorted_batches(lengths, batch_size):
        prompts = [list(pairs[i][0]) for i in idx]
        conts = [list(pairs[i][1]) for i in idx]
        if any(not p for p in prompts):
            raise ValueError("empty prompt")
        shared = min(_common_prefix_len(prompts), min(len(p) for p in prompts) - 1)
        cache = _prefix_cache(model, prompts[0][:shared], len(idx))
        # Layout per row: [shared prefix (cached)] [left padding, rest of prompt] [continuation, right padding].
        # Every prompt ends in column pw - 1, so one index tensor selects the predicting positions.
        pw = max(len(p) - shared for p in prompts)
        cw = max(1, max(len(c) for c in conts))
        ids = torch.full((len(idx), pw + cw), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), shared + pw + cw), dtype=torch.long)
        mask[:, :shared] = 1
        for row, (p, c) in enumerate(zip(prompts, conts)):
            rest = p[shared:]
            ids[row, pw - len(rest) : pw] = torch.tensor(rest)
            mask[row, shared + pw - len(rest) : shared + pw + len(c)] = 1
            if c:
                ids[row, pw : pw + len(c)] = torch.tensor(c)
        pos = (mask.cumsum(1) - 1).clamp(min=0)[:, shared:]
        keep = torch.arange(pw - 1, pw - 1 + cw, device=dev)
        kwargs = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "position_ids": pos.to(dev), "cache": cache, "use_cache": cache is not None}
        if split is None:
            logits = model(**kwargs, logits_to_keep=keep).logits
            rows = (logits[row, : len(c)] for row, c in enumerate(conts))
        else:
            decoder, project = split
            hidden = decoder(**kwargs).last_hidden_state[:, keep]
            rows = (project(hidden[row, : len(c)]) for row, c in enumerate(conts))
        del cache, kwargs  # the prefix cache's copies, one per row, are not needed past the forward pass
        for i, row_logits in zip(idx, rows):
            yield i, F.log_softmax(row_logits.float(), dim=-1)
        if on_batch is not None:
            on_batch(len(idx))


def _prefix_cache(model: PreTrainedModel, prefix: Sequence[int], rows: int) -> object | None:
    """KV cache of ``prefix`` run once, copied to ``rows`` rows (None for an empty prefix)."""
    if not prefix:
        return None
    dev = _device(model)
    res = model(input_ids=torch.tensor([list(prefix)], device=dev), use_cache=True, logits_to_keep=1)
    cache = _cache_of(res)
    cache.reorder_cache(torch.zeros(rows, dtype=torch.long, device=dev))  # type: ignore[attr-defined]
    return cache


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
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Greedy continuations (token ids, EOS included when produced) for each prompt, batched.

    ``on_batch(n)`` is called after each batch of ``n`` prompts (for progress bars).
    """
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[int]] = [[] for _ in prompts]
    for idx in _length_sorted_batches([len(p) for p in prompts], batch_size):
        gens = decode_greedy(model, [prompts[i] for i in idx], max_new_tokens=max_new_tokens, eos_id=tok.eos_token_id, pad_id=pad)
        for i, g in zip(idx, gens):
            out[i] = g
        if on_batch is not None:
            on_batch(len(idx))
    return out


@torch.no_grad()
def decode_greedy(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int = 0,
    finished: Callable[[int, list[int]], bool] | None = None,
) -> list[list[int]]:
    """Greedy (argmax) decoding of one batch with a KV cache; returns each row's new tokens.

    A row stops at EOS (kept as its last token), when ``finished(row, tokens)`` says so, or after
    ``max_new_tokens``. Compared with ``model.generate`` this runs the batch's shared prompt
    prefix once (:func:`_prefix_cache`) and drops finished rows from the cache, so a batch whose
    answers are mostly short stops paying for them; the tokens are the same up to float rounding
    (a test compares the two).
    """
    if max_new_tokens <= 0 or not prompts:
        return [[] for _ in prompts]
    dev = _device(model)
    rows = [list(p) for p in prompts]
    res, mask, pos = _prompt_pass(model, rows, pad_id)
    cache, nxt = _cache_of(res), res.logits[:, -1].argmax(-1)
    mask, last = mask.to(dev), pos[:, -1].to(dev)
    out: list[list[int]] = [[] for _ in rows]
    alive = list(range(len(rows)))  # original row of each row still decoding
    for step in range(max_new_tokens):
        keep = []
        for r, t in enumerate(nxt.tolist()):
            i = alive[r]
            out[i].append(t)
            if t != eos_id and not (finished is not None and finished(i, out[i])):
                keep.append(r)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            sel = torch.tensor(keep, device=dev)
            cache.reorder_cache(sel)  # type: ignore[attr-defined]
            mask, last, nxt = mask[sel], last[sel], nxt[sel]
            alive = [alive[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        last = last + 1
        res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], cache=cache, use_cache=True)
        cache, nxt = _cache_of(res), res.logits[:, -1].argmax(-1)
    return out


# --- the general suites ---------------------------------------------------------------------------


def _common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for j in range(n):
        t = first[j]
        if any(s[j] != t for s in seqs):
            return j
    return n


@torch.no_grad()
def choice_scores(
    model: PreTrainedModel,
    items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
    *,
    batch_size: int = 16,
    pad_id: int = 0,
) -> list[list[tuple[float, int]]]:
    """For each ``(prompt_ids, [choice_ids, ...])`` the ``(sum log-prob, token count)`` of every choice.

    Same numbers as :func:`continuation_scores` on every (prompt, choice) pair, with far less work:

    * the prefix all prompts of a batch share (the chat template's system turn: 24 of SmolLM2's
      ~37 prompt tokens) is run once and its KV cache copied to every row;
    * each prompt is run once and its cache copied to one row per choice, so only the choice
      tokens are fed after it;
    * only the logits that are needed are computed (``logits_to_keep``, and per choice row the
      trunk's hidden states projected one row at a time): the LM head over a 49k vocabulary is
      ~20% of a small model's work per position, over Gemma's 262k most of it.
    """
    dev = _device(model)
    split = lm_split(model)
    out: list[list[tuple[float, int]]] = [[] for _ in items]
    for idx in _length_sorted_batches([len(p) for p, _ in items], batch_size):
        res, mask, pos = _prompt_pass(model, [list(items[i][0]) for i in idx], pad_id)
        first_lp = F.log_softmax(res.logits[:, -1].float(), dim=-1)  # predicts each choice's first token
        cache = _cache_of(res)

        rows = [(r, i, k) for r, i in enumerate(idx) for k in range(len(items[i][1]))]
        if not rows:
            continue
        cwidth = max(len(items[i][1][k]) for _, i, k in rows)
        cids = torch.full((len(rows), cwidth), pad_id, dtype=torch.long)
        cmask = torch.zeros((len(rows), cwidth), dtype=torch.long)
        for j, (_, i, k) in enumerate(rows):
            c = list(items[i][1][k])
            if not c:
                raise ValueError(f"item {i}: choice {k} is empty")
            cids[j, : len(c)] = torch.tensor(c)
            cmask[j, : len(c)] = 1
        src = torch.tensor([r for r, _, _ in rows])
        cache.reorder_cache(src.to(dev))  # one copy of the prompt's cache per choice row
        full_mask = torch.cat([mask[src], cmask], dim=1)
        cpos = pos[src, -1:] + 1 + torch.arange(cwidth)[None, :]
        kwargs = {"input_ids": cids.to(dev), "attention_mask": full_mask.to(dev), "position_ids": cpos.to(dev), "cache": cache, "use_cache": True}
        if split is None:
            logits = model(**kwargs).logits
            row_logits: Callable[[int, int], torch.Tensor] = lambda j, n: logits[j, :n]  # noqa: E731
        else:
            # Hidden states for every choice row, projected one row at a time: rows x width x vocab
            # logits (64 x 10 x 262k fp32 = 670 MB on Gemma) are never held at once.
            decoder, project = split
            hidden = decoder(**kwargs).last_hidden_state
            row_logits = lambda j, n: project(hidden[j, :n])  # noqa: E731
        del cache, kwargs, res  # the KV cache (one copy of each prompt per choice) is not needed past the forward pass
        for j, (r, i, k) in enumerate(rows):
            c = list(items[i][1][k])
            total = float(first_lp[r, c[0]])
            if len(c) > 1:
                # Column t of the choice logits predicts choice token t+1.
                lp = F.log_softmax(row_logits(j, len(c) - 1).float(), dim=-1)
                total += float(lp.gather(1, torch.tensor(c[1:], device=lp.device)[:, None]).sum())
            out[i].append((total, len(c)))
    return out


def _prompt_pass(model: PreTrainedModel, prompts: list[list[int]], pad_id: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Run a batch of prompts once, keeping their KV cache and each row's last logits.

    The prefix all prompts share runs once (:func:`_prefix_cache`; at least one token per row is
    left after it, so every row has logits for its next token); the rest is left-padded so every
    prompt ends in the last column. Returns ``(model output, attention mask, positions)``, mask
    and positions on the CPU and covering the shared prefix too.
    """
    if any(not p for p in prompts):
        raise ValueError("empty prompt")
    dev = _device(model)
    shared = min(_common_prefix_len(prompts), min(len(p) for p in prompts) - 1)
    cache = _prefix_cache(model, prompts[0][:shared], len(prompts))
    width = max(len(p) - shared for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for row, p in enumerate(prompts):
        n = len(p) - shared
        ids[row, width - n :] = torch.tensor(p[shared:])
        mask[row, shared + width - n :] = 1
    # Explicit positions: with padding in between, real tokens must still count 0, 1, 2, ...
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    res = model(
        input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos[:, shared:].to(dev),
        cache=cache, use_cache=True, logits_to_keep=1,
    )  # fmt: skip
    return res, mask, pos


def _cache_of(res: object) -> object:
    # transformers >= 5.2x names the KV cache `cache` (`past_key_values` is deprecated).
    return res["cache"] if "cache" in res else res.past_key_values  # type: ignore[index,attr-defined]


@torch.no_grad()
def generate_greedy_until(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_strings: Sequence[str] = (),
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers as text, each cut before the first of ``stop_strings`` (and at EOS).

    Like :func:`generate_greedy`, but a row also finishes as soon as its text contains a stop
    string, so a batch whose answers are all complete ("= 12\\n", a closed code fence) stops
    decoding instead of running to ``max_new_tokens``. (Decoding a few dozen new tokens per row
    per step is cheap next to a forward pass, and unlike transformers' ``stop_strings`` table it
    works with any tokenizer, word-level ones included.)
    """
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = ["" for _ in prompts]

    def has_stop(_: int, new: list[int]) -> bool:
        text = tok.decode(new, skip_special_tokens=True)
        return any(s in text for s in stop_strings)

    for idx in _length_sorted_batches([len(p) for p in prompts], batch_size):
        gens = decode_greedy(
            model, [prompts[i] for i in idx], max_new_tokens=max_new_tokens, eos_id=tok.eos_token_id, pad_id=pad,
            finished=has_stop if stop_strings else None,
        )  # fmt: skip
        for i, new in zip(idx, gens):
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            text = tok.decode(new, skip_special_tokens=True)
            for s in stop_strings:
                cut = text.find(s)
                if cut >= 0:
                    text = text[:cut]
            out[i] = text
    return out
