"""The evaluator that runs at every checkpoint: both suites, always.

It holds everything that does not change during a run (tokenizer, domain data, the cached base
reference) so each call only runs the tuned model. The base itself is the same weights with the
adapter disabled, so no second copy of the model is ever in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .domain import DomainData, domain_scores
from .drift import GeneralReference, general_drift


@dataclass
class Evaluator:
    """Evaluates a model on the domain suite and the general suite; returns one flat metrics dict."""

    tok: PreTrainedTokenizerBase
    domain: DomainData
    reference: GeneralReference
    batch_size: int = 16
    qa_max_new_tokens: int = 24
    system_prompt: str | None = None
    extra_general: Any = None  # callable(model, tok) -> dict[str, float]: the general task suites
    last_items: dict[str, list[float]] = field(default_factory=dict)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        """Run both suites on ``model`` (put in eval mode, restored after)."""
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        try:
            pad = self.tok.pad_token_id or 0
            drift = general_drift(model, self.reference, batch_size=self.batch_size, pad_id=pad)
            t1 = time.perf_counter()
            dom, items = domain_scores(
                model, self.tok, self.domain, batch_size=self.batch_size, max_new_tokens=self.qa_max_new_tokens, system_prompt=self.system_prompt
            )
            t2 = time.perf_counter()
            extra = self.extra_general(model, self.tok) if self.extra_general else {}
            t3 = time.perf_counter()
        finally:
            model.train(was_training)
        metrics: dict[str, Any] = {"step": step}
        metrics["general/kl"] = drift.kl
        metrics["general/nll"] = drift.nll
        for cat, v in drift.kl_by_category.items():
            metrics[f"general/kl/{cat}"] = v
        metrics.update(extra)
        metrics.update(dom)
        metrics["time/eval_general_s"] = round(t1 - t0 + t3 - t2, 3)
        metrics["time/eval_domain_s"] = round(t2 - t1, 3)
        self.last_items = {"general/kl": drift.per_prompt_kl, **items}
        return metrics
