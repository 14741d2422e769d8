"""General drift: how far the tuned model's answers to everyday prompts moved from the base's.

Multiple-choice scores hide a kind of forgetting that users notice first: the tuned model answers
"what is the capital of France" in the domain's style. We measure it directly as the mean
per-token KL(base || tuned) over the *base model's own greedy answers* to general prompts, plus
the tuned model's NLL of those answers.

The base side is computed once and cached: greedy answers, and for each answer position the
base's top-k log-probs. KL is then taken between the two distributions coarse-grained to
{top-k tokens, everything else}; by the data-processing inequality this is a lower bound on the
full KL, and it is exact up to the base's probability mass outside its top k (tiny for k=64 on
greedy answers; stored per position so it can be checked).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..cache import cache_dir
from ..data import require_fields
from ..errors import InputError
from ..hashing import sha256_json
from ..io import atomic_write_bytes, iter_jsonl
from ..promptformat import prompt_format
from .scoring import chat_prompt_ids, generate_greedy, iter_continuation_logprobs

BUILTIN_PROMPTS = "general_prompts.v1.jsonl"


def load_general_prompts(spec: str = "builtin", limit: int = 0) -> list[dict[str, str]]:
    """General prompts: forgetless' versioned file ('builtin') or a user JSONL with 'prompt' and 'category'."""
    if spec == "builtin":
        path = Path(str(resources.files("forgetless.evaluate") / "data" / BUILTIN_PROMPTS))
    else:
        path = Path(spec)
    out = []
    for line, rec in iter_jsonl(path):
        require_fields(rec, {"prompt": str}, file=path, line=line)
        out.append({"id": str(rec.get("id", f"{path.name}:{line}")), "category": str(rec.get("category", "general")), "prompt": rec["prompt"]})
    return out[:limit] if limit else out


@dataclass
class GeneralReference:
    """The base model's greedy answers to the general prompts and its top-k log-probs along them."""

    ids: list[str]
    categories: list[str]
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    topk_ids: list[torch.Tensor]  # [len(answer), k] per prompt
    topk_logprobs: list[torch.Tensor]  # [len(answer), k] per prompt
    meta: dict[str, object] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write to a safetensors file (flattened, with offsets) atomically."""
        lens = torch.tensor([len(a) for a in self.answer_ids], dtype=torch.long)
        tensors = {
            "answer_lens": lens,
            "answers": torch.tensor([t for a in self.answer_ids for t in a], dtype=torch.long),
            "prompt_lens": torch.tensor([len(p) for p in self.prompt_ids], dtype=torch.long),
            "prompts": torch.tensor([t for p in self.prompt_ids for t in p], dtype=torch.long),
            "topk_ids": torch.cat(self.topk_ids).contiguous(),
            "topk_logprobs": torch.cat(self.topk_logprobs).contiguous(),
        }
        meta = {"ids": json.dumps(self.ids), "categories": json.dumps(self.categories), "meta": json.dumps(self.meta)}
        # A name of this process's own: ranks of a distributed launch may build the same reference at once.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.safetensors")
        save_file(tensors, str(tmp), metadata=meta)
        atomic_write_bytes(path, tmp.read_bytes())
        tmp.unlink()

    @classmethod
    def load(cls, path: Path) -> GeneralReference:
        """Read a reference written by :meth:`save`."""
        from safetensors import safe_open

        t = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        alens, plens = t["answer_lens"].tolist(), t["prompt_lens"].tolist()
        answers = list(torch.split(t["answers"], alens))
        prompts = list(torch.split(t["prompts"], plens))
        return cls(
            ids=json.loads(meta["ids"]),
            categories=json.loads(meta["categories"]),
            prompt_ids=[p.tolist() for p in prompts],
            answer_ids=[a.tolist() for a in answers],
            topk_ids=list(torch.split(t["topk_ids"], alens)),
            topk_logprobs=list(torch.split(t["topk_logprobs"], alens)),
            meta=json.loads(meta["meta"]),
        )


@torch.no_grad()
def build_reference(
    base: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[dict[str, str]],
    *,
    max_new_tokens: int,
    topk: int,
    batch_size: int = 16,
    system_prompt: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> GeneralReference:
    """Generate the base's greedy answers and record its top-k log-probs at every answer position.

    ``on_batch(n)`` reports progress: called per batch while generating, then while scoring.
    """
    p_ids = [chat_prompt_ids(tok, p["prompt"], system=system_prompt) for p in prompts]
    answers = generate_greedy(base, tok, p_ids, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=on_batch)
    keep = [i for i, a in enumerate(answers) if a]
    if len(keep) < len(answers):
        # An empty answer (EOS straight away) carries no tokens to compare; drop it rather than divide by 0.
        p_ids, answers, prompts = [p_ids[i] for i in keep], [answers[i] for i in keep], [prompts[i] for i in keep]
    tk_ids: list[torch.Tensor] = [torch.empty(0)] * len(answers)
    tk_lp: list[torch.Tensor] = [torch.empty(0)] * len(answers)
    pad = tok.pad_token_id or 0
    for i, lp in iter_continuation_logprobs(base, list(zip(p_ids, answers)), batch_size=batch_size, pad_id=pad, on_batch=on_batch):
        v, ix = lp.topk(min(topk, lp.shape[-1]), dim=-1)
        tk_ids[i], tk_lp[i] = ix.cpu(), v.cpu()
    return GeneralReference(
        ids=[p["id"] for p in prompts],
        categories=[p["category"] for p in prompts],
        prompt_ids=p_ids,
        answer_ids=answers,
        topk_ids=tk_ids,
        topk_logprobs=tk_lp,
        meta={"max_new_tokens": max_new_tokens, "topk": topk, "prompt_format": prompt_format(tok)},
    )


def cached_reference(
    base: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    prompts: list[dict[str, str]],
    *,
    base_fingerprint: str,
    tokenizer_fingerprint: str,
    max_new_tokens: int,
    topk: int,
    batch_size: int = 16,
    system_prompt: str | None = None,
    on_batch: Callable[[int], None] | None = None,
    precision: str = "fp32",
) -> tuple[GeneralReference, Path, bool]:
    """Load the reference from the user cache, or build and cache it. Returns (ref, path, was_cached).

    ``precision`` (resolved: fp32 or bf16) and ``batch_size`` are those the tuned model will be
    evaluated with: the reference is built the same way, so rounding does not show up as drift (in
    bf16, scoring the same model in batches of 16 or 64 measured KL 0.001355 vs 0.001327).
    """
    from . import precision as prec

    key = sha256_json(
        {"v": 2, "base": base_fingerprint, "tok": tokenizer_fingerprint, "prompts": prompts, "n": max_new_tokens, "k": topk,
         "sys": system_prompt, "prec": precision, "batch": batch_size}
    )[:32]  # fmt: skip
    path = cache_dir("reference") / f"general-{key}.safetensors"
    if path.exists():
        return GeneralReference.load(path), path, True
    with prec.evaluating(base, precision):
        ref = build_reference(
            base, tok, prompts, max_new_tokens=max_new_tokens, topk=topk, batch_size=batch_size, system_prompt=system_prompt, on_batch=on_batch
        )  # fmt: skip
    ref.meta["precision"] = precision
    ref.save(path)
    return ref, path, False


def coarse_kl(base_topk_lp: torch.Tensor, base_topk_ids: torch.Tensor, tuned_lp: torch.Tensor) -> torch.Tensor:
    """Per-position KL(base || tuned) over the partition {each top-k token, all others}.

    ``base_topk_lp``/``base_topk_ids``: ``[L, k]``; ``tuned_lp``: ``[L, V]`` log-softmax of the tuned
    model. Returns ``[L]`` in nats. Exact when the base puts no mass outside its top k.
    """
    p_lp = base_topk_lp.float()
    q_lp = tuned_lp.gather(1, base_topk_ids.to(tuned_lp.device)).float().cpu()
    kl = (p_lp.exp() * (p_lp - q_lp)).sum(-1)
    p_rest = (1.0 - p_lp.exp().sum(-1)).clamp_min(0.0)
    q_rest = (1.0 - q_lp.exp().sum(-1)).clamp_min(1e-12)
    # Only where the base leaves mass outside its top k; 0*log0 is 0.
    rest = torch.where(p_rest > 1e-12, p_rest * (p_rest.clamp_min(1e-12).log() - q_rest.log()), torch.zeros_like(p_rest))
    return (kl + rest).clamp_min(0.0)


@dataclass
class DriftResult:
    """General drift of a model against the cached base reference."""

    kl: float  # mean per-token KL(base || tuned), nats
    nll: float  # mean per-token NLL of the base's answers under the tuned model
    kl_by_category: dict[str, float]
    per_prompt_kl: list[float]  # mean KL per prompt (for confidence intervals)
    tokens: int


@torch.no_grad()
def general_drift(model: torch.nn.Module, ref: GeneralReference, *, batch_size: int = 16, pad_id: int = 0) -> DriftResult:
    """KL(base || model) and NLL along the base's own answers, overall and per category."""
    pairs = list(zip(ref.prompt_ids, ref.answer_ids))
    kl_sum = [0.0] * len(pairs)
    nll_sum = [0.0] * len(pairs)
    for i, lp in iter_continuation_logprobs(model, pairs, batch_size=batch_size, pad_id=pad_id):
        kl_sum[i] = float(coarse_kl(ref.topk_logprobs[i], ref.topk_ids[i], lp).sum())
        target = torch.tensor(ref.answer_ids[i], device=lp.device)
        nll_sum[i] = float(-lp.gather(1, target[:, None]).sum())
    lens = [len(a) for a in ref.answer_ids]
    total = sum(lens)
    by_cat: dict[str, float] = {}
    for cat in sorted(set(ref.categories)):
        idx = [i for i, c in enumerate(ref.categories) if c == cat]
        by_cat[cat] = sum(kl_sum[i] for i in idx) / max(1, sum(lens[i] for i in idx))
    return DriftResult(
        kl=sum(kl_sum) / total,
        nll=sum(nll_sum) / total,
        kl_by_category=by_cat,
        per_prompt_kl=[k / n for k, n in zip(kl_sum, lens)],
        tokens=total,
    )


def validate_prompts_file(path: Path) -> None:
    """Raise InputError if a user general-prompts file is unusable (used by `forgetless validate`)."""
    if not path.exists():
        raise InputError("file not found", file=path)
    load_general_prompts(str(path))
