"""Does extending the vocabulary help or hurt domain loss at equal training steps?

Two LoRA runs over the same batches, same seed and same adapter hyperparameters: one on the base,
one on the extended base with the new rows trained at their own learning rate. Loss is compared
as **nats per character** of held-out domain text, because the two tokenizers cut the same text
into different numbers of tokens, so per-token losses are not comparable. Every text is scored
after a fixed start token (EOS) so its first real token is predicted too, under both tokenizers.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .extend import extend_vocabulary, lora_token_kwargs, param_groups


def _batch(tok: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    start = tok.eos_token_id
    seqs = [[start] + tok(t, add_special_tokens=False)["input_ids"][: max_length - 1] for t in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), start, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids, mask


def _nll_sum(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = ids[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return (nll.view_as(target) * mask[:, 1:]).sum()


@torch.no_grad()
def nll_per_char(model: torch.nn.Module, tok: PreTrainedTokenizerBase, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 256) -> float:
    """Total NLL (nats) of ``texts`` divided by their total characters (texts are truncated to ``max_length`` tokens)."""
    was_training = model.training
    model.eval()
    total = 0.0
    chars = 0
    for s in range(0, len(texts), batch_size):
        chunk = texts[s : s + batch_size]
        ids, mask = _batch(tok, chunk, max_length)
        total += float(_nll_sum(model, ids, mask))
        # Characters actually scored: decode the kept ids (truncation may have cut a text).
        chars += sum(len(tok.decode(row[1 : int(m.sum())])) for row, m in zip(ids, mask))
    model.train(was_training)
    return total / max(chars, 1)


def train_lora(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    token_lr: float,
    lora_extra: dict[str, Any] | None = None,
    seed: int = 0,
    max_length: int = 128,
    on_step: Callable[[int, float], None] | None = None,
) -> torch.nn.Module:
    """A plain LoRA loop (AdamW, constant LR, no weight decay on new rows); returns the trained peft model."""
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        **(lora_extra or {}),
    )
    pm = get_peft_model(model, cfg)
    opt = torch.optim.AdamW(param_groups(pm, lr=lr, token_lr=token_lr, weight_decay=0.0))
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    pm.train()
    for step in range(steps):
        idx = [order[(step * batch_size + j) % len(order)] for j in range(batch_size)]
        ids, mask = _batch(tok, [texts[i] for i in idx], max_length)
        loss = _nll_sum(pm, ids, mask) / mask[:, 1:].sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if on_step is not None:
            on_step(step + 1, loss.detach().item())
    pm.eval()
    return pm


def compare_extension(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    terms: Sequence[str],
    train_texts: Sequence[str],
    eval_texts: Sequence[str],
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 1e-3,
    token_lr: float = 1e-2,
    init: str = "pieces",
    seed: int = 0,
    on_step: Callable[[str, int, float], None] | None = None,
) -> dict[str, Any]:
    """Held-out domain nats/char before and after ``steps`` LoRA steps, without and with the extension.

    ``model`` and ``tok`` are not modified (each run works on a copy).
    """
    out: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "lr": lr, "token_lr": token_lr, "terms": len(terms)}
    for arm in ("base", "extended"):
        m, t = copy.deepcopy(model), copy.deepcopy(tok)
        extra = None
        if arm == "extended":
            res = extend_vocabulary(m, t, terms, init=init)  # type: ignore[arg-type]
            extra = lora_token_kwargs(m, res)
            out["new_tokens"] = res.k
        before = nll_per_char(m, t, eval_texts)
        cb = (lambda s, loss, arm=arm: on_step(arm, s, loss)) if on_step else None
        pm = train_lora(m, t, train_texts, steps=steps, batch_size=batch_size, lr=lr, token_lr=token_lr, lora_extra=extra, seed=seed, on_step=cb)
        out[arm] = {"nll_per_char_step0": before, "nll_per_char_final": nll_per_char(pm, t, eval_texts)}
        del pm, m
    return out
