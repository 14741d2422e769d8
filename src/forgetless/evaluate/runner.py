"""The evaluator that runs at every checkpoint: both suites, always.

It holds everything that does not change during a run (tokenizer, domain data, the cached base
reference, the base's general-suite scores) so each call only runs the tuned model. The base
itself is the same weights with the adapter disabled: no second copy is ever in memory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from .domain import DomainData, domain_scores
from .drift import GeneralReference, general_drift
from .stats import Score, make_score


@dataclass
class Evaluator:
    """Evaluates a model on the domain suite and the general suite; returns one flat metrics dict.

    ``general_suites``: the general task suites (knowledge MC, math, code) to score in the loop,
    each limited by ``suite_limits`` items; () scores KL drift only.
    """

    tok: PreTrainedTokenizerBase
    domain: DomainData
    reference: GeneralReference
    batch_size: int = 16
    qa_max_new_tokens: int = 24
    system_prompt: str | None = None
    general_suites: tuple[str, ...] = ()
    suite_limits: Mapping[str, int] | None = None
    base_cache_key: str | None = None  # identifies the base weights: its suite scores are cached
    last_scores: dict[str, Score] = field(default_factory=dict)
    base_scores: dict[str, Score] = field(default_factory=dict)

    def _suites(self, model: torch.nn.Module, *, cache_key: str | None) -> dict[str, Score]:
        if not self.general_suites:
            return {}
        from .suites import general_suite_scores

        return general_suite_scores(
            model, self.tok, limit_per_suite=dict(self.suite_limits or {}), batch_size=self.batch_size,
            cache_key=cache_key, suites=self.general_suites,
        )  # fmt: skip

    @torch.no_grad()
    def ensure_base_scores(self, model: torch.nn.Module) -> dict[str, Score]:
        """The base's general-suite scores (adapter disabled; cached by the base fingerprint)."""
        if not self.base_scores and self.general_suites:
            ctx = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
            was = model.training
            model.eval()
            with ctx:
                self.base_scores = self._suites(model, cache_key=self.base_cache_key)
            model.train(was)
        return self.base_scores

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        """Run both suites on ``model`` (put in eval mode, restored after)."""
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        try:
            pad = self.tok.pad_token_id or 0
            drift = general_drift(model, self.reference, batch_size=self.batch_size, pad_id=pad)
            scores = self._suites(model, cache_key=None)
            t1 = time.perf_counter()
            dom, items = domain_scores(
                model, self.tok, self.domain, batch_size=self.batch_size, max_new_tokens=self.qa_max_new_tokens, system_prompt=self.system_prompt
            )
            t2 = time.perf_counter()
        finally:
            model.train(was_training)
        scores["kl"] = make_score(drift.per_prompt_kl, self.reference.ids)
        for name, vals in items.items():
            scores[name] = make_score(vals)
        self.last_scores = scores
        metrics: dict[str, Any] = {"step": step, "general/kl": drift.kl, "general/nll": drift.nll}
        for cat, v in drift.kl_by_category.items():
            metrics[f"general/kl/{cat}"] = v
        for name, sc in scores.items():
            if name in ("kl",) or name.startswith("domain/"):
                continue
            metrics[f"general/{name}"] = sc.value
            metrics[f"general/{name}_lo"] = sc.ci_low
            metrics[f"general/{name}_hi"] = sc.ci_high
            metrics[f"general/{name}_n"] = sc.n
        metrics.update(dom)
        for name, sc in scores.items():
            if name.startswith("domain/"):
                metrics[f"{name}_lo"], metrics[f"{name}_hi"], metrics[f"{name}_n"] = sc.ci_low, sc.ci_high, sc.n
        metrics["time/eval_general_s"] = round(t1 - t0, 3)
        metrics["time/eval_domain_s"] = round(t2 - t1, 3)
        return metrics
