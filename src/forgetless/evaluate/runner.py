"""The evaluator that runs at every checkpoint: both suites, always.

It holds everything that does not change during a run (tokenizer, domain data, the cached base
reference, the base's general-suite scores) so each call only runs the tuned model. The base
itself is the same weights with the adapter disabled: no second copy is ever in memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..adapter import adapter_off
from ..cache import cache_dir
from ..hashing import sha256_json
from ..io import atomic_write_json
from . import precision as prec
from .domain import DomainData, domain_scores
from .drift import GeneralReference, general_drift
from .stats import Score, make_score

# Bump when a change to the scorers changes the numbers: cached base evaluations are then redone.
EVAL_VERSION = 2


@dataclass
class Evaluation:
    """What one evaluation measured: the flat metrics line, and the per-item scores behind it
    (paired comparisons, such as the budget's accuracy-drop test, need the items)."""

    metrics: dict[str, Any]
    scores: dict[str, Score]


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
    precision: str = "fp32"  # resolved ("fp32" or "bf16"); the reference must be built under the same
    base_scores: dict[str, Score] = field(default_factory=dict)  # cache of the base's general-suite scores

    def _suites(self, model: torch.nn.Module, *, cache_key: str | None) -> dict[str, Score]:
        if not self.general_suites:
            return {}
        from .suites import general_suite_scores

        return general_suite_scores(
            model, self.tok, limit_per_suite=dict(self.suite_limits or {}), batch_size=self.batch_size,
            cache_key=f"{cache_key}:{self.precision}:b{self.batch_size}" if cache_key else None, suites=self.general_suites,
        )  # fmt: skip

    @torch.no_grad()
    def ensure_base_scores(self, model: torch.nn.Module) -> dict[str, Score]:
        """The base's general-suite scores (adapter disabled; cached by the base fingerprint)."""
        if not self.base_scores and self.general_suites:
            was = model.training
            model.eval()
            with adapter_off(model), prec.evaluating(model, self.precision):
                self.base_scores = self._suites(model, cache_key=self.base_cache_key)
            model.train(was)
        return self.base_scores

    def _base_eval_file(self) -> Path | None:
        if self.base_cache_key is None:
            return None
        key = sha256_json({
            "v": EVAL_VERSION, "base": self.base_cache_key, "precision": self.precision, "ref": self.reference.meta,
            "ref_answers": self.reference.answer_ids, "qa": self.domain.qa, "mc": self.domain.mc,
            "text": [repr(t) for t in self.domain.text], "batch": self.batch_size, "qa_new": self.qa_max_new_tokens,
            "sys": self.system_prompt, "suites": self.general_suites, "limits": dict(self.suite_limits or {}),
        })  # fmt: skip
        return cache_dir("base_eval") / f"{key[:32]}.json"

    @torch.no_grad()
    def evaluate_base(self, model: torch.nn.Module) -> tuple[Evaluation, bool]:
        """Step-0 metrics: the base model, scored once per (base, data, settings) and cached.

        Only used when ``model`` is exactly the base (:func:`is_noop_adapter`): then every score
        equals the base's, and KL is 0 by construction. Returns ``(metrics, was_cached)``.
        """
        path = self._base_eval_file()
        if path is not None and path.exists():
            cached = json.loads(path.read_text())
            scores = {k: Score.from_dict(v) for k, v in cached["scores"].items()}
            return Evaluation({**cached["metrics"], "time/eval_cached": 1}, scores), True
        ev = self.evaluate(model, step=0)
        if path is not None:
            atomic_write_json(path, {"metrics": ev.metrics, "scores": {k: v.to_dict(with_values=True) for k, v in ev.scores.items()}})
        return ev, False

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, step: int) -> Evaluation:
        """Run both suites on ``model`` (put in eval mode, restored after); returns what they measured."""
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        try:
            with prec.evaluating(model, self.precision):
                pad = self.tok.pad_token_id or 0
                drift = general_drift(model, self.reference, batch_size=self.batch_size, pad_id=pad)
                scores = self._suites(model, cache_key=None)
                t1 = time.perf_counter()
                dom, items = domain_scores(
                    model, self.tok, self.domain, batch_size=self.batch_size, max_new_tokens=self.qa_max_new_tokens,
                    system_prompt=self.system_prompt,
                )  # fmt: skip
                t2 = time.perf_counter()
        finally:
            model.train(was_training)
        scores["kl"] = make_score(drift.per_prompt_kl, self.reference.ids)
        for name, vals in items.items():
            scores[name] = make_score(vals)
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
        return Evaluation(metrics, scores)


def is_noop_adapter(model: torch.nn.Module) -> bool:
    """True when ``model``'s outputs are bit-identical to its base: no PEFT wrapper, or plain LoRA
    with every ``lora_B`` still zero (PEFT's initialisation) and nothing else trainable added.

    DoRA is excluded (it recomputes the weight, which rounds differently), as are trainable token
    rows and ``modules_to_save`` copies.
    """
    if not hasattr(model, "peft_config"):
        return True
    for name, p in model.named_parameters():
        if any(k in name for k in ("lora_magnitude", "trainable_tokens", "modules_to_save", "lora_embedding")):
            return False
        if "lora_B" in name and bool(p.detach().ne(0).any()):
            return False
    return True


def eval_seconds(metrics: Mapping[str, Any]) -> float:
    """Wall seconds one evaluation took in this run (0 when it was read from the cache)."""
    if metrics.get("time/eval_cached"):
        return 0.0
    return float(metrics.get("time/eval_general_s", 0.0)) + float(metrics.get("time/eval_domain_s", 0.0))


def eval_timing(history: list[dict[str, Any]], train_s: float) -> dict[str, Any]:
    """How much of training the in-loop evaluations cost.

    ``train_s`` is the Trainer's wall time, which includes the evaluations at checkpoints (steps >
    0); the step-0 evaluation of the base runs before it. ``eval_share`` is in-loop evaluation
    time over the rest of the training time (the goal is <= 15% of training).
    """
    in_loop = sum(eval_seconds(h) for h in history if h["step"] > 0)
    base = sum(eval_seconds(h) for h in history if h["step"] == 0)
    rest = max(train_s - in_loop, 1e-9)
    return {
        "train_s": round(train_s, 1),
        "eval_in_loop_s": round(in_loop, 1),
        "eval_in_loop_count": sum(1 for h in history if h["step"] > 0),
        "eval_base_s": round(base, 1),
        "eval_base_cached": any(h.get("time/eval_cached") for h in history if h["step"] == 0),
        "eval_share": round(in_loop / rest, 4),
    }
