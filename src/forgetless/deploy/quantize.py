"""int8 quantization of a run's merged model, with a quality gate on both suites.

The gate runs the same two suites the training stage runs, on the fp32 merged model and on a
deployment variant built from it (int8 here; GGUF files in :mod:`forgetless.deploy.export`), and
refuses the variant when (:func:`judge_variant`, the one gate decision)

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
from ..errors import ForgetlessError, InputError
from ..hashing import adapter_hash, sha256_json
from ..io import atomic_write_json, read_text_file
from ..runfolder import RunFolder, read_run_folder
from .variants import DEFAULT_INT8_SCHEME, Target, load_target_tokenizer, load_variant, quantize_int8


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
    scheme: str = DEFAULT_INT8_SCHEME

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


def judge_variant(
    fp32: dict[str, float],
    candidate: dict[str, float],
    *,
    budget: BudgetConfig,
    max_kl_increase: float,
    max_domain_drop: float,
) -> tuple[bool, list[str], str | None]:
    """Pass/fail of a deployment variant (int8, a GGUF file) from both suites' scores next to fp32's.

    The one gate decision of the deploy stage. ``fp32``/``candidate`` hold ``general/kl`` and the
    ``domain/...`` metrics. The general side is two budgets judged by :func:`forgetless.budget.judge`:
    the run's own, and the quantization tolerance (fp32's KL plus ``max_kl_increase``). Returns
    ``(passed, reasons, primary_metric)``.
    """
    if max_kl_increase < 0 or max_domain_drop < 0:
        raise ForgetlessError(f"the gate's limits must be >= 0 (max_kl_increase={max_kl_increase}, max_domain_drop={max_domain_drop})")
    reasons = []
    tolerance = BudgetConfig(general_kl=fp32["general/kl"] + max_kl_increase)
    if not judge(tolerance, candidate).allowed:
        inc = candidate["general/kl"] - fp32["general/kl"]
        reasons.append(f"general: KL to base rose by {inc:.4f} nats/token over fp32 (limit {max_kl_increase})")
    reasons += [f"general: the run's budget: {v}" for v in judge(budget, candidate).violations]
    metric = _primary(fp32)
    if metric is not None and metric in candidate:
        drop = fp32[metric] - candidate[metric]
        if lower_is_better(metric):
            drop = -drop
        # Perplexity moves on another scale than accuracy: judge it relative to fp32.
        limit = max_domain_drop * (abs(fp32[metric]) if lower_is_better(metric) else 1.0)
        if drop > limit:
            reasons.append(f"domain: {metric} fell from {fp32[metric]:.4f} to {candidate[metric]:.4f} (limit {limit:.4f})")
    return not reasons, reasons, metric


@dataclass
class Scored:
    """Both suites on the fp32 merged model and on each candidate built from it."""

    fp32: dict[str, float]
    candidates: dict[str, dict[str, float]]
    adapter_sha256: str
    budget: BudgetConfig
    general_prompts: int
    general_tokens: int
    qa_items: int
    mc_items: int
    general_limit: int


def score_against_fp32(
    run_dir: str | Path,
    build: Any,
    *,
    general_limit: int | None = None,
    domain_limit: int = 0,
    progress: Any = None,
    allow_remote_code: bool = False,
) -> Scored:
    """Score a run's fp32 merged model and every candidate ``build(merged, tok)`` yields, on both suites.

    ``build`` yields ``(label, model, tokenizer)``; the general suite scores token ids (the base
    reference's), the domain suite prompts through the candidate's own tokenizer, so a GGUF file's
    tokenizer and chat template are tested too. ``general_limit`` (None: the run's own
    ``eval.general_limit``) and ``domain_limit`` (0: all) trade precision for time.
    """
    from ..config import dump_config
    from ..evaluate.domain import DomainData, domain_scores, load_domain
    from ..evaluate.drift import cached_reference, general_drift, load_general_prompts
    from ..models import load_model, tokenizer_fingerprint, weights_fingerprint

    say = progress or (lambda _d: None)
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

    def suites(model: torch.nn.Module, mtok: Any, label: str) -> dict[str, float]:
        say(f"general suite ({label})")
        d = general_drift(model, ref, batch_size=bs, pad_id=pad)
        say(f"domain suite ({label})")
        dom, _ = domain_scores(model, mtok, domain, batch_size=bs, max_new_tokens=cfg.eval.qa_max_new_tokens, system_prompt=cfg.data.system_prompt)
        return {"general/kl": d.kl, "general/nll": d.nll, **{k: v for k, v in dom.items() if isinstance(v, float)}}

    # fp32 whatever the run trained in: a variant is judged against full precision, not against bf16.
    merged = load_variant(t.in_fp32(), "merged", tok=tok)
    # fp32's scores are the same for every variant gated against it: computed once per adapter and
    # evaluation setting, then read back (an evaluation of a 135M model takes about a minute on CPU).
    a_hash = adapter_hash(run.adapter_dir)
    key = sha256_json({"adapter": a_hash, "config": dump_config(cfg), "general_limit": limit, "domain_limit": domain_limit})
    cache = run_dir / artifacts.DEPLOY_DIR / artifacts.FP32_SCORES
    fp32_scores = _cached_scores(run, key)
    if fp32_scores is None:
        fp32_scores = suites(merged, tok, "fp32")
        atomic_write_json(cache, {"key": key, "scores": fp32_scores})
    cands = {}
    for label, model, mtok in build(merged, tok):
        cands[label] = suites(model, mtok, label)
        del model
    return Scored(
        fp32=fp32_scores, candidates=cands, adapter_sha256=a_hash,
        budget=cfg.budget, general_prompts=len(ref.ids),
        general_tokens=sum(len(a) for a in ref.answer_ids), qa_items=len(domain.qa), mc_items=len(domain.mc),
        general_limit=limit,
    )  # fmt: skip


def _cached_scores(run: RunFolder, key: str) -> dict[str, float] | None:
    try:
        rec = run.read_json(f"{artifacts.DEPLOY_DIR}/{artifacts.FP32_SCORES}")
    except InputError:
        return None  # a damaged cache is recomputed, not trusted
    return rec.get("scores") if isinstance(rec, dict) and rec.get("key") == key else None


def domain_part(scores: dict[str, float]) -> dict[str, float]:
    """The top-level ``domain/...`` metrics of a score dict (no per-split breakdowns)."""
    return {k: v for k, v in scores.items() if k.startswith("domain/") and k.count("/") == 1}


def quantize_and_gate(
    run_dir: str | Path,
    *,
    backend: str = "torch",
    scheme: str = DEFAULT_INT8_SCHEME,
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
    t0 = time.perf_counter()
    run_dir = Path(run_dir).resolve()

    def build(merged: torch.nn.Module, tok: Any) -> Any:
        (progress or (lambda _d: None))(f"quantizing ({backend}, {scheme})")
        # quantize_dynamic copies; torchao edits in place (fp32 is scored already)
        yield "int8", quantize_int8(merged, backend, scheme), tok

    sc = score_against_fp32(
        run_dir, build, general_limit=general_limit, domain_limit=domain_limit, progress=progress, allow_remote_code=allow_remote_code
    )
    fp32_scores, int8_scores = sc.fp32, sc.candidates["int8"]
    passed, reasons, metric = judge_variant(
        fp32_scores, int8_scores, budget=sc.budget, max_kl_increase=max_kl_increase, max_domain_drop=max_domain_drop
    )
    result = GateResult(
        backend=backend,
        adapter_sha256=sc.adapter_sha256,
        general={
            "kl_fp32": fp32_scores["general/kl"], "kl_int8": int8_scores["general/kl"],
            "kl_increase": int8_scores["general/kl"] - fp32_scores["general/kl"],
            "nll_fp32": fp32_scores["general/nll"], "nll_int8": int8_scores["general/nll"],
            "budget_general_kl": sc.budget.general_kl, "prompts": sc.general_prompts, "tokens": sc.general_tokens,
        },
        domain={
            "primary_metric": metric, "fp32": domain_part(fp32_scores), "int8": domain_part(int8_scores),
            "qa_items": sc.qa_items, "mc_items": sc.mc_items,
        },
        passed=passed,
        reasons=reasons,
        seconds=round(time.perf_counter() - t0, 1),
        limits={"max_kl_increase": max_kl_increase, "max_domain_drop": max_domain_drop, "general_limit": sc.general_limit, "domain_limit": domain_limit},
        scheme=scheme,
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
