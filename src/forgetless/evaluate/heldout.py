"""A general-drift measure the run never steers on: held-out prompts with long answers.

The budget is judged in the loop on forgetless' general prompts (48-token answers). A budget that
only holds there flatters: the run selects the checkpoint that looks best on exactly those
prompts. This module measures the same KL(base || tuned) on a second, differently written set
(``general_heldout.v1.jsonl``: conversational, multi-sentence requests for explanations, advice,
letters, plans and code) along the base's own greedy answers of up to 128 tokens, once, on the
selected checkpoint.

Both averages are reported, because they answer different questions: **per token** (every
answer token weighs the same: long answers count more, and it is what the in-loop budget uses)
and **per prompt** (each prompt's own token mean, then the mean over prompts: what a user who
asks these questions sees on average). The KL is also split at ``split_at`` answer tokens (the
in-loop answer length) to show whether drift grows along the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from . import precision as prec
from .drift import GeneralReference, cached_reference, coarse_kl, load_general_prompts
from .scoring import iter_continuation_logprobs
from .stats import make_score

HELDOUT_PROMPTS = "general_heldout.v1.jsonl"


def heldout_prompts_path() -> Path:
    """The shipped held-out prompt file."""
    return Path(str(resources.files("forgetless.evaluate") / "data" / HELDOUT_PROMPTS))


def load_heldout_prompts(spec: str = "builtin") -> list[dict[str, str]]:
    """The held-out general prompts: 'builtin' (the shipped file) or a JSONL path with 'prompt'."""
    return load_general_prompts(str(heldout_prompts_path()) if spec == "builtin" else spec)


def heldout_reference(
    base: torch.nn.Module, tok: Any, spec: str, *, max_new_tokens: int, base_fingerprint: str, tokenizer_fingerprint: str,
    topk: int, batch_size: int, system_prompt: str | None, precision: str,
) -> GeneralReference | None:  # fmt: skip
    """The base's answers and top-k log-probs on the held-out prompts (cached); None when off.

    Must run on the base before training: a fully fine-tuned model has no base left to ask.
    """
    if spec == "none":
        return None
    ref, _, _ = cached_reference(
        base, tok, load_heldout_prompts(spec), base_fingerprint=base_fingerprint, tokenizer_fingerprint=tokenizer_fingerprint,
        max_new_tokens=max_new_tokens, topk=topk, batch_size=batch_size, system_prompt=system_prompt, precision=precision,
    )  # fmt: skip
    return ref


@dataclass
class HeldoutDrift:
    """KL(base || tuned) on the held-out prompts, averaged two ways and split along the answer."""

    kl_per_token: float
    kl_per_prompt: float
    kl_per_prompt_lo: float  # 95% bootstrap interval over prompts
    kl_per_prompt_hi: float
    kl_first: float  # per-token mean over answer positions < split_at
    kl_rest: float  # per-token mean over positions >= split_at (nan when no answer is that long)
    split_at: int
    prompts: int
    tokens: int
    tokens_rest: int

    def to_metrics(self, prefix: str = "heldout") -> dict[str, Any]:
        """Flat metrics, each name saying its averaging."""
        return {
            f"{prefix}/kl_per_token": self.kl_per_token,
            f"{prefix}/kl_per_prompt": self.kl_per_prompt,
            f"{prefix}/kl_per_prompt_lo": self.kl_per_prompt_lo,
            f"{prefix}/kl_per_prompt_hi": self.kl_per_prompt_hi,
            f"{prefix}/kl_per_token_first{self.split_at}": self.kl_first,
            # None, not NaN, when no answer is that long: the summary is JSON that any parser reads.
            f"{prefix}/kl_per_token_after{self.split_at}": None if math.isnan(self.kl_rest) else self.kl_rest,
            f"{prefix}/prompts": self.prompts,
            f"{prefix}/tokens": self.tokens,
            f"{prefix}/tokens_after{self.split_at}": self.tokens_rest,
        }


@torch.no_grad()
def heldout_drift(
    model: torch.nn.Module, ref: GeneralReference, *, batch_size: int = 16, pad_id: int = 0, split_at: int = 48, precision: str = "fp32"
) -> HeldoutDrift:
    """Measure ``model`` against the held-out reference (eval mode; the mode is restored after)."""
    pairs = list(zip(ref.prompt_ids, ref.answer_ids))
    per_pos: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    was = model.training
    model.eval()
    try:
        with prec.evaluating(model, precision):
            for i, lp in iter_continuation_logprobs(model, pairs, batch_size=batch_size, pad_id=pad_id):
                per_pos[i] = coarse_kl(ref.topk_logprobs[i], ref.topk_ids[i], lp)
    finally:
        model.train(was)
    return summarize(per_pos, split_at=split_at)


def summarize(per_pos: list[torch.Tensor], *, split_at: int) -> HeldoutDrift:
    """Both averages and the split along the answer, from each prompt's per-position KL."""
    tokens = sum(len(k) for k in per_pos)
    per_prompt = [float(k.mean()) for k in per_pos]
    first = [k[:split_at] for k in per_pos]
    rest = [k[split_at:] for k in per_pos if len(k) > split_at]
    n_first, n_rest = sum(len(k) for k in first), sum(len(k) for k in rest)
    sc = make_score(per_prompt)
    return HeldoutDrift(
        kl_per_token=sum(float(k.sum()) for k in per_pos) / tokens,
        kl_per_prompt=sc.value,
        kl_per_prompt_lo=sc.ci_low,
        kl_per_prompt_hi=sc.ci_high,
        kl_first=sum(float(k.sum()) for k in first) / n_first,
        kl_rest=sum(float(k.sum()) for k in rest) / n_rest if n_rest else float("nan"),
        split_at=split_at,
        prompts=len(per_pos),
        tokens=tokens,
        tokens_rest=n_rest,
    )
