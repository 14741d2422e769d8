"""Batched model primitives every suite is built from: chat prompts, greedy generation, and the
log-probabilities a model gives to a continuation.

All functions take token ids so callers can cache prompts, sort by length (less padding) and
reuse a prompt across several continuations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList


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


def _left_padded(prompts: Sequence[Sequence[int]], idx: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Ids and attention mask for ``prompts[idx]``, left-padded to the longest.

    Left padding puts every row's last real token at the same position, so generated tokens line up.
    """
    width = max(len(prompts[i]) for i in idx)
    ids = torch.full((len(idx), width), pad, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(prompts[i])
        ids[row, width - n :] = torch.tensor(list(prompts[i]))
        mask[row, width - n :] = 1
    return ids, mask, width


def _greedy(model: PreTrainedModel, tok: PreTrainedTokenizerBase, ids: torch.Tensor, mask: torch.Tensor, pad: int, max_new_tokens: int, **kw: object) -> torch.Tensor:
    """``model.generate`` with greedy decoding; sampling knobs from the model's generation config are cleared."""
    return model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=pad, eos_token_id=tok.eos_token_id, temperature=None, top_p=None, top_k=None, **kw,
    )  # fmt: skip


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
        if on_batch is not None:
            on_batch(len(idx))


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
    dev = _device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[int]] = [[] for _ in prompts]
    for idx in _length_sorted_batches([len(p) for p in prompts], batch_size):
        ids, mask, width = _left_padded(prompts, idx, pad)
        gen = _greedy(model, tok, ids.to(dev), mask.to(dev), pad, max_new_tokens)
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id) + 1]
            out[i] = new
        if on_batch is not None:
            on_batch(len(idx))
    return out


# --- added for the general suites (issue 4) ------------------------------------------------------


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
    * only the logits that are needed are computed (``logits_to_keep``): the LM head over a
      49k vocabulary is ~20% of a small model's work per position.
    """
    dev = _device(model)
    out: list[list[tuple[float, int]]] = [[] for _ in items]
    for idx in _length_sorted_batches([len(p) for p, _ in items], batch_size):
        prompts = [list(items[i][0]) for i in idx]
        if any(not p for p in prompts):
            raise ValueError("empty prompt")
        # Keep at least one token per row after the shared prefix: its logits predict the choices.
        shared = min(_common_prefix_len(prompts), min(len(p) for p in prompts) - 1)
        cache = None
        if shared > 0:
            res = model(input_ids=torch.tensor([prompts[0][:shared]], device=dev), use_cache=True, logits_to_keep=1)
            cache = _cache_of(res)
            cache.reorder_cache(torch.zeros(len(idx), dtype=torch.long, device=dev))
        width = max(len(p) - shared for p in prompts)
        # Left padding of the part after the shared prefix: every prompt ends in the same column,
        # so its last logits sit in column -1 and all choices start at the same cache position.
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, p in enumerate(prompts):
            n = len(p) - shared
            ids[row, width - n :] = torch.tensor(p[shared:])
            mask[row, shared + width - n :] = 1
        # Explicit positions: with padding in between, real tokens must still count 0, 1, 2, ...
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        res = model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=pos[:, shared:].to(dev),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
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
        logits = model(
            input_ids=cids.to(dev), attention_mask=full_mask.to(dev), position_ids=cpos.to(dev), cache=cache, use_cache=True
        ).logits
        for j, (r, i, k) in enumerate(rows):
            c = list(items[i][1][k])
            total = float(first_lp[r, c[0]])
            if len(c) > 1:
                # Column t of the choice logits predicts choice token t+1.
                lp = F.log_softmax(logits[j, : len(c) - 1].float(), dim=-1)
                total += float(lp.gather(1, torch.tensor(c[1:], device=lp.device)[:, None]).sum())
            out[i].append((total, len(c)))
    return out


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
    decoding instead of running to ``max_new_tokens``.
    """
    dev = _device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = ["" for _ in prompts]
    for idx in _length_sorted_batches([len(p) for p in prompts], batch_size):
        ids, mask, width = _left_padded(prompts, idx, pad)
        stop = StoppingCriteriaList([_StopOnText(tok, width, stop_strings)]) if stop_strings else None
        gen = _greedy(model, tok, ids.to(dev), mask.to(dev), pad, max_new_tokens, stopping_criteria=stop)
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            text = tok.decode(new, skip_special_tokens=True)
            for s in stop_strings:
                cut = text.find(s)
                if cut >= 0:
                    text = text[:cut]
            out[i] = text
    return out


class _StopOnText(StoppingCriteria):
    """Per-row stop once the decoded new text contains any stop string.

    transformers' own ``stop_strings`` precomputes a table over the vocabulary that assumes a
    byte-level/BPE tokenizer (it fails on word-level ones); decoding a few dozen new tokens per
    row per step is cheap next to a forward pass and works with any tokenizer.
    """

    def __init__(self, tok: PreTrainedTokenizerBase, start: int, stops: Sequence[str]) -> None:
        self.tok, self.start, self.stops = tok, start, list(stops)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        done = [any(s in self.tok.decode(row[self.start :], skip_special_tokens=True) for s in self.stops) for row in input_ids.tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
