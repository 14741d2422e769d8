"""Measure the step-0 guarantees of a vocabulary extension on general text.

1. General text tokenizes to exactly the same ids under the extended tokenizer, unless it
   contains a new term.
2. ``KL(base || extended)`` of next-token distributions on that text stays within Hewitt's
   ``log(1 + k/V)``. The base distribution has no mass on the new ids, so per position
   ``KL = sum_i p_i log(p_i / q_i)`` over the old vocabulary, with ``q`` the extended model's
   softmax over old + new ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def ids_unchanged(
    base_tok: PreTrainedTokenizerBase, ext_tok: PreTrainedTokenizerBase, texts: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Indices of texts whose ids are identical under both tokenizers, and of those that differ."""
    a = base_tok(list(texts), add_special_tokens=False)["input_ids"]
    b = ext_tok(list(texts), add_special_tokens=False)["input_ids"]
    same = [i for i in range(len(texts)) if a[i] == b[i]]
    return same, [i for i in range(len(texts)) if a[i] != b[i]]


@torch.no_grad()
def step0_kl(
    base_model: PreTrainedModel,
    ext_model: PreTrainedModel,
    ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
) -> torch.Tensor:
    """Per-position ``KL(base || extended)`` (nats, float64) over every position of every sequence in ``ids``.

    ``ids`` must be valid for both models (texts without new terms). Sequences are run one batch at a
    time, right-padded; padded positions are dropped.
    """
    old = base_model.get_output_embeddings().weight.shape[0]
    dev = next(base_model.parameters()).device
    out = []
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for s in range(0, len(order), batch_size):
        batch = [list(ids[i]) for i in order[s : s + batch_size]]
        width = max(len(b) for b in batch)
        x = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, b in enumerate(batch):
            x[r, : len(b)] = torch.tensor(b)
            mask[r, : len(b)] = 1
        x, mask = x.to(dev), mask.to(dev)
        # float64: the KLs measured here are ~1e-5 nats, below float32's rounding on log-probs of ~10.
        lp = F.log_softmax(base_model(input_ids=x, attention_mask=mask).logits.double(), -1)
        lq = F.log_softmax(ext_model(input_ids=x, attention_mask=mask).logits.double(), -1)[..., :old]
        kl = (lp.exp() * (lp - lq)).sum(-1)
        out.append(kl[mask.bool()].cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def step0_report(
    base_model: PreTrainedModel,
    ext_model: PreTrainedModel,
    base_tok: PreTrainedTokenizerBase,
    ext_tok: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    k: int,
) -> dict[str, Any]:
    """Both guarantees on ``texts``: ids identity and KL statistics against the bound ``log(1 + k/V)``."""
    same, differ = ids_unchanged(base_tok, ext_tok, texts)
    ids = base_tok([texts[i] for i in same], add_special_tokens=False)["input_ids"]
    kl = step0_kl(base_model, ext_model, ids)
    vocab = base_model.get_output_embeddings().weight.shape[0]
    bound = math.log1p(k / vocab)
    return {
        "texts": len(texts),
        "texts_ids_unchanged": len(same),
        "texts_with_new_terms": [texts[i][:80] for i in differ],
        "positions": int(kl.numel()),
        "kl_mean": float(kl.mean()) if kl.numel() else 0.0,
        "kl_p99": float(kl.quantile(0.99)) if kl.numel() else 0.0,
        "kl_max": float(kl.max()) if kl.numel() else 0.0,
        "bound": bound,
        "k": k,
        "V": int(vocab),
        "mean_within_bound": bool(kl.numel() == 0 or float(kl.mean()) <= bound),
        "share_positions_over_bound": float((kl > bound).double().mean()) if kl.numel() else 0.0,
    }
