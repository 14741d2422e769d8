"""int8 quantization of a run's merged model, with a quality gate on both suites.

The gate runs the same two suites the training stage runs, on the fp32 merged model and on its
int8 copy, and refuses the int8 artifact when

* general: ``KL(base || int8)`` rises above ``KL(base || fp32)`` by more than ``max_kl_increase``
  (default 0.01 nats/token), or exceeds the run's forgetting budget ``budget.general_kl``;
* domain: the primary domain metric of int8 falls below fp32's by more than ``max_domain_drop``.

The base reference (the base's greedy answers and top-k log-probs) is the one the training run
cached, so the KL numbers are on the same footing as the run's ``metrics.jsonl``.

The verdict lands in ``<run>/deploy/int8/quant_info.json`` (pass or refused, with every number);
:func:`check_int8_gate` is what a server calls before serving int8.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import artifacts
from ..budget import PRIMARY_DOMAIN, BudgetConfig, judge, lower_is_better
from ..errors import ForgetlessError
from ..io import atomic_write_json, read_text_file
from ..registry.lineage import adapter_hash
from ..runfolder import read_run_folder
from .variants import Target, load_target_tokenizer, load_variant, quantize_int8


@dataclass
class GateResult:
    """Outcome of the int8 quality gate (what ``quant_info.json`` holds)."""

    backend: str
    adapter_sha256: str
    general: dict[str, Any]
    domain: dict[str, Any]
    passed: bool
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    limits: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        d = asdict(self)
        d["verdict"] = "pass" if self.passed else "refused"
        return d


def quant_info_path(run_dir: Path) -> Path:
    """``<run>/deploy/int8/quant_info.json``."""
    return run_dir / artifacts.DEPLOY_DIR / artifacts.QUANT_DIR / artifacts.QUANT_INFO


def _primary(scores: dict[str, float]) -> str | None:
    return next((m for m in (*PRIMARY_DOMAIN, "domain/ppl") if m in scores), None)


def judge_int8(
    fp32: dict[str, float],
    int8: dict[str, float],
    *,
    budget: BudgetConfig,
    max_kl_increase: float,
    max_domain_drop: float,
) -> tuple[bool, list[str], str | None]:
    """Pass/fail of an int8 model from both suites' scores next to the fp32 model's.

    ``fp32``/``int8`` hold ``general/kl`` and the ``domain/...`` metrics. The general side is two
    budgets judged by :func:`forgetless.budget.judge`: the run's own, and the quantization
    tolerance (fp32's KL plus ``max_kl_increase``). Returns ``(passed, reasons, primary_metric)``.
    """
    reasons = []
    tolerance = BudgetConfig(general_kl=fp32["general/kl"] + max_kl_increase)
    if not judge(tolerance, int8).allowed:
        inc = int8["general/kl"] - fp32["general/kl"]
        reasons.append(f"general: KL to base rose by {inc:.4f} nats/token over fp32 (limit {max_kl_increase})")
    reasons += [f"general: the run's budget: {v}" for v in judge(budget, int8).violations]
    metric = _primary(fp32)
    if metric is not None and metric in int8:
        drop = fp32[metric] - int8[metric]
        if lower_is_better(metric):
            drop = -drop
        # Perplexity moves on another scale than accuracy: judge it relative to fp32.
        limit = max_domain_drop * (abs(fp32[metric]) if lower_is_better(metric) else 1.0)
        if drop > limit:
            reasons.append(f"domain: {metric} fell from {fp32[metric]:.4f} to {int8[metric]:.4f} (limit {limit:.4f})")
    return not reasons, reasons, metric


def quantize_and_gate(
    run_dir: str | Path,
    *,
    backend: str = "torch",
    max_kl_increase: float = 0.01,
    max_domain_drop: float = 0.02,
    general_limit: int | None = None,
    domain_limit: int = 0,
    progress: Any = None,
    allow_remote_code: bool = False,
) -> GateResult:
    """Quantize a run's merged model to int8, evaluate both suites on fp32 and int8, write the verdict.

    ``general_limit`` (None: the run's own ``eval.general_limit``) and ``domain_limit`` (0: all) trade
    precision for time. ``progress(description)`` is called before each phase. Raises nothing for a
    refused model: the caller decides (the CLI exits 2); the result says why.
    """
    from ..evaluate.domain import DomainData, domain_scores, load_domain
    from ..evaluate.drift import cached_reference, general_drift, load_general_prompts
    from ..models import load_model, tokenizer_fingerprint, weights_fingerprint

    say = progress or (lambda _d: None)
    t0 = time.perf_counter()
    run = read_run_folder(run_dir)
    run_dir, cfg = run.path, run.config
    # Revision and remote-code setting travel with the run: the base scored here is the one it trained on.
    t = Target(run.model(allow_remote_code=allow_remote_code), run_dir)
    run.require_adapter()
    tok = load_target_tokenizer(t)
    pad = tok.pad_token_id or 0
    bs = cfg.eval.batch_size

    say("base reference (cached by the training run)")
    limit = cfg.eval.general_limit if general_limit is None else general_limit
    prompts = load_general_prompts(cfg.eval.general_prompts, limit)
    base = load_model(t.base_model, dtype="float32", trust_remote_code=t.model.trust_remote_code, revision=t.model.revision)
    ref, _, _ = cached_reference(
        base, tok, prompts, base_fingerprint=weights_fingerprint(cfg.model.name, revision=cfg.model.revision),
        tokenizer_fingerprint=tokenizer_fingerprint(tok), max_new_tokens=cfg.eval.general_max_new_tokens,
        topk=cfg.eval.kl_topk, batch_size=bs, system_prompt=cfg.data.system_prompt,
    )  # fmt: skip
    del base

    domain = load_domain(cfg.data.eval_qa, cfg.data.eval_mc, None)
    if domain_limit:
        domain = DomainData(qa=domain.qa[:domain_limit], mc=domain.mc[:domain_limit])

    def suites(model: torch.nn.Module, label: str) -> dict[str, float]:
        say(f"general suite ({label})")
        d = general_drift(model, ref, batch_size=bs, pad_id=pad)
        say(f"domain suite ({label})")
        dom, _ = domain_scores(model, tok, domain, batch_size=bs, max_new_tokens=cfg.eval.qa_max_new_tokens, system_prompt=cfg.data.system_prompt)
        return {"general/kl": d.kl, "general/nll": d.nll, **{k: v for k, v in dom.items() if isinstance(v, float)}}

    # fp32 whatever the run trained in: int8 is judged against full precision, not against bf16.
    merged = load_variant(t.in_fp32(), "merged", tok=tok)
    fp32_scores = suites(merged, "fp32")
    say(f"quantizing ({backend})")
    int8 = quantize_int8(merged, backend)  # quantize_dynamic copies; torchao edits in place (fp32 is scored already)
    int8_scores = suites(int8, "int8")

    budget = cfg.budget.general_kl
    passed, reasons, metric = judge_int8(
        fp32_scores, int8_scores, budget=cfg.budget, max_kl_increase=max_kl_increase, max_domain_drop=max_domain_drop
    )
    result = GateResult(
        backend=backend,
        adapter_sha256=adapter_hash(t.adapter_dir),  # type: ignore[arg-type]
        general={
            "kl_fp32": fp32_scores["general/kl"], "kl_int8": int8_scores["general/kl"],
            "kl_increase": int8_scores["general/kl"] - fp32_scores["general/kl"],
            "nll_fp32": fp32_scores["general/nll"], "nll_int8": int8_scores["general/nll"],
            "budget_general_kl": budget, "prompts": len(ref.ids), "tokens": sum(len(a) for a in ref.answer_ids),
        },
        domain={
            "primary_metric": metric,
            "fp32": {k: v for k, v in fp32_scores.items() if k.startswith("domain/") and k.count("/") == 1},
            "int8": {k: v for k, v in int8_scores.items() if k.startswith("domain/") and k.count("/") == 1},
            "qa_items": len(domain.qa), "mc_items": len(domain.mc),
        },
        passed=passed,
        reasons=reasons,
        seconds=round(time.perf_counter() - t0, 1),
        limits={"max_kl_increase": max_kl_increase, "max_domain_drop": max_domain_drop, "general_limit": limit, "domain_limit": domain_limit},
    )  # fmt: skip
    atomic_write_json(quant_info_path(run_dir), result.as_dict())
    return result


def check_int8_gate(run_dir: str | Path) -> dict[str, Any]:
    """The recorded gate verdict for a run's int8 model; raises :class:`ForgetlessError` unless it passed
    for the adapter that is on disk now."""
    run_dir = Path(run_dir)
    p = quant_info_path(run_dir)
    if not p.exists():
        raise ForgetlessError(f"{run_dir}: int8 was never gated; run `forgetless quantize {run_dir}` first")
    try:
        info = json.loads(read_text_file(p))
    except json.JSONDecodeError as e:
        raise ForgetlessError(f"{p}: not valid JSON ({e.msg})") from None
    if info.get("verdict") != "pass":
        raise ForgetlessError(f"{run_dir}: int8 was refused by the quality gate: {'; '.join(info.get('reasons', []))}")
    if info.get("adapter_sha256") != adapter_hash(run_dir / artifacts.ADAPTER_DIR):
        raise ForgetlessError(f"{run_dir}: the adapter changed after the int8 gate ran; run `forgetless quantize` again")
    return info
