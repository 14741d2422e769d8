"""The served system's own scores: router + adapter + base, as ``forgetless serve`` answers.

Users of ``<prefix>-auto`` get neither the adapter nor the base alone: each request goes to one of
them by the router. A router that sends 5% of general queries to the adapter or 10% of domain
queries to the base changes both the general and the domain score, so both are measured here for
the routed system:

* every evaluation prompt is routed by the run's router (:meth:`Router.score` on the prompt
  encoded as the server encodes it, the code the server runs);
* each item's served value is the adapter's value when routed to the adapter, the base's when
  routed to the base (the server runs exactly one of them per request, greedy by default, so this
  is the served answer's score, computed without a server in between);
* general drift: per-token KL(base || served) along the base's answers to the general prompts, 0 on
  every prompt the router sends to the base;
* the routing confusion matrix on held-out domain questions, held-out general prompts and the
  neighbouring-specialty sets, each rate with its Wilson interval (``serve/routereval.py``).

Every score carries n and its bootstrap interval, and the served-vs-adapter and served-vs-base
differences carry the interval of the paired difference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import artifacts
from ..adapter import adapter_off
from ..io import atomic_write_bytes, atomic_write_json
from ..runfolder import read_run_folder
from .stats import Score, compare, make_score


def _pick(routes: list[bool], adapter_vals: list[float], base_vals: list[float]) -> list[float]:
    """Per item: the adapter's value where the item went to the adapter, else the base's."""
    return [a if r else b for r, a, b in zip(routes, adapter_vals, base_vals)]


def _routes(router: Any, model: Any, tok: Any, texts: list[str], system_prompt: str | None, batch_size: int) -> tuple[list[bool], np.ndarray]:
    """(to_adapter per text, scores). No router: the server sends every auto request to the adapter."""
    if router is None:
        return [True] * len(texts), np.full(len(texts), math.nan)
    from ..serve.routereval import route_scores

    s = route_scores(router, model, tok, texts, system_prompt=system_prompt, batch_size=batch_size)
    return [bool(x <= router.threshold) for x in s], s


def _triple(base: Score, adapter: Score, served: Score, *, higher_is_better: bool = True) -> dict[str, Any]:
    return {
        "base": base.to_dict(with_values=True), "adapter": adapter.to_dict(with_values=True), "served": served.to_dict(with_values=True),
        "served_vs_adapter": compare(adapter, served, higher_is_better=higher_is_better).to_dict(),
        "served_vs_base": compare(base, served, higher_is_better=higher_is_better).to_dict(),
    }  # fmt: skip


@torch.no_grad()
def evaluate_served(run_dir: Path, *, batch_size: int | None = None, general_suites: bool = True, console: Any = None,
                    allow_remote_code: bool = False) -> dict[str, Any]:  # fmt: skip
    """Score a run folder's routed system (see the module docstring). Returns what ``served.json`` holds."""
    from ..adapter import attach_run_adapter, run_tokenizer
    from ..models import load_model, tokenizer_fingerprint, weights_fingerprint
    from ..serve.router import load_router
    from ..serve.routereval import heldout_general, load_neighbours, route_scores, router_report
    from . import precision as prec
    from .domain import domain_scores, load_domain
    from .drift import general_drift, load_general_prompts

    run = read_run_folder(run_dir)
    run_dir = run.path
    adapter_dir = run.require_adapter()  # no adapter: nothing is served
    cfg = run.config
    bs = batch_size or cfg.eval.batch_size
    sys_prompt = cfg.data.system_prompt
    say = console.print if console is not None else (lambda *_a, **_k: None)

    m = run.model(allow_remote_code=allow_remote_code)
    tok = run_tokenizer(adapter_dir, m)  # a tokens-stage run's extended vocabulary is the adapter's
    base = load_model(m.name, dtype=m.dtype, trust_remote_code=m.trust_remote_code, revision=m.revision)
    model = attach_run_adapter(base, adapter_dir, tok)
    router = load_router(run_dir)
    precision = prec.resolve(cfg.eval.precision, "cpu" if not torch.cuda.is_available() else "cuda")
    if torch.cuda.is_available():
        model.to("cuda")
    pad = tok.pad_token_id or 0
    out: dict[str, Any] = {"run_dir": str(run_dir), "router": None if router is None else {"method": router.method, "threshold": router.threshold}}

    # --- routing: held-out domain, held-out general, neighbouring specialties ------------------
    domain = load_domain(cfg.data.eval_qa, cfg.data.eval_mc, None)
    dom_q = [r["question"] for r in domain.qa] + [r["question"] for r in domain.mc]
    prompts = load_general_prompts(cfg.eval.general_prompts, cfg.eval.general_limit)
    if router is not None:
        say("  served: routing held-out domain, general and neighbouring-specialty queries")
        cal = [p["prompt"] for p in load_general_prompts(cfg.eval.general_prompts)]
        sets = {"domain": dom_q, "general": heldout_general(cal)}
        sets.update({f"neighbour/{k}": v for k, v in load_neighbours().items()})
        out["routing"] = router_report(router, {k: route_scores(router, model, tok, v, system_prompt=sys_prompt, batch_size=bs) for k, v in sets.items() if v})

    # Route every scored item first: the router runs the base (adapter off), which cannot happen
    # inside `evaluating` (it swaps merged copies in place of the LoRA layers).
    text_of = {p["id"]: p["prompt"] for p in prompts}
    ref = _reference(model, tok, prompts, cfg, bs, precision)
    to_ad, _ = _routes(router, model, tok, [text_of[i] for i in ref.ids], sys_prompt, bs)
    suites = list(cfg.eval.general_suites) if general_suites else []
    limits = dict(cfg.eval.suite_limits or {})
    suite_routes = {}
    for suite in suites:
        from .suites import suite_items

        items = suite_items(suite, limits.get(suite))
        suite_routes[suite], _ = _routes(router, model, tok, [getattr(it, "question", None) or getattr(it, "prompt", "") for it in items], sys_prompt, bs)
    r_qa, _ = _routes(router, model, tok, [r["question"] for r in domain.qa], sys_prompt, bs)
    r_mc, _ = _routes(router, model, tok, [r["question"] for r in domain.mc], sys_prompt, bs)

    kw = {"batch_size": bs, "max_new_tokens": cfg.eval.qa_max_new_tokens, "system_prompt": sys_prompt}
    s_ad: dict[str, Score] = {}
    s_base: dict[str, Score] = {}
    it_ad: dict[str, list[float]] = {}
    it_base: dict[str, list[float]] = {}
    if suites:
        from .suites import general_suite_scores

        base_key = f"{weights_fingerprint(m.name, revision=m.revision)}:{tokenizer_fingerprint(tok)}:{precision}:b{bs}"
    say("  served: the adapter on general KL, general and domain suites")
    with prec.evaluating(model, precision):
        drift = general_drift(model, ref, batch_size=bs, pad_id=pad)
        if suites:
            s_ad = general_suite_scores(model, tok, limit_per_suite=limits, batch_size=bs, suites=suites)
        if domain.qa or domain.mc:
            _, it_ad = domain_scores(model, tok, domain, **kw)
    say("  served: the base on general and domain suites")
    with adapter_off(model), prec.evaluating(model, precision):
        if suites:
            s_base = general_suite_scores(model, tok, limit_per_suite=limits, batch_size=bs, cache_key=base_key, suites=suites)
        if domain.qa or domain.mc:
            _, it_base = domain_scores(model, tok, domain, **kw)

    scores: dict[str, Any] = {}
    lens = [len(a) for a in ref.answer_ids]
    kl_ad = drift.per_prompt_kl
    kl_served = [k if r else 0.0 for k, r in zip(kl_ad, to_ad)]  # the base's KL to itself is 0
    zeros = [0.0] * len(kl_ad)
    scores["general/kl"] = _triple(make_score(zeros, ref.ids), make_score(kl_ad, ref.ids), make_score(kl_served, ref.ids), higher_is_better=False)
    scores["general/kl"]["token_weighted"] = {
        "adapter": drift.kl, "served": sum(k * n for k, n in zip(kl_served, lens)) / max(1, sum(lens)), "base": 0.0,
    }  # fmt: skip
    scores["general/kl"]["to_adapter"] = int(sum(to_ad))
    for suite in suites:
        r, b, a = suite_routes[suite], s_base[suite], s_ad[suite]
        scores[f"general/{suite}"] = _triple(b, a, make_score(_pick(r, list(a.values), list(b.values)), list(a.ids)))
        scores[f"general/{suite}"]["to_adapter"] = int(sum(r))
    for key, a_vals in it_ad.items():
        r = r_qa if key.removeprefix("domain/").startswith("qa_") else r_mc
        b_vals = it_base[key]
        scores[key] = _triple(make_score(b_vals), make_score(a_vals), make_score(_pick(r, a_vals, b_vals)), higher_is_better=not key.endswith("qa_nll"))
        scores[key]["to_adapter"] = int(sum(r))
    out["scores"] = scores
    return out


def _reference(model: Any, tok: Any, prompts: list[dict[str, str]], cfg: Any, bs: int, precision: str) -> Any:
    """The run's general reference (the base's answers): read from the cache the run filled."""
    from ..models import tokenizer_fingerprint, weights_fingerprint
    from .drift import cached_reference

    m = cfg.model
    with adapter_off(model):
        ref, _, _ = cached_reference(
            model, tok, prompts, base_fingerprint=weights_fingerprint(m.name, revision=m.revision),
            tokenizer_fingerprint=tokenizer_fingerprint(tok), max_new_tokens=cfg.eval.general_max_new_tokens, topk=cfg.eval.kl_topk,
            batch_size=bs, system_prompt=cfg.data.system_prompt, precision=precision,
        )  # fmt: skip
    return ref


# --- report -------------------------------------------------------------------------------------

_HEADLINE = ("general/kl", "domain/qa_recall", "domain/mc_acc", "general/knowledge_mc", "general/math", "general/code")


def _s(d: dict[str, Any]) -> str:
    if math.isnan(d.get("ci_low", math.nan)):
        return f"{d['value']:.3f}"
    return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def _delta(d: dict[str, Any]) -> str:
    if math.isnan(d.get("ci_low", math.nan)):
        return f"{d['delta']:+.3f}"
    return f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def served_markdown(rep: dict[str, Any]) -> str:
    """The "served system" section of report.md."""
    from ..serve.routereval import format_router_report

    lines = ["## Served system (router + adapter + base)", ""]
    r = rep.get("router")
    lines.append("No router in this run: `-auto` sends every request to the adapter." if r is None
                 else f"Router: {r['method']}, threshold {r['threshold']:.4g}. Each item is scored on the side the router sends it to.")  # fmt: skip
    lines += ["", "| score | n | base | adapter alone | served | served - adapter | served - base | items to adapter |", "|---|---|---|---|---|---|---|---|"]
    keys = [k for k in _HEADLINE if k in rep["scores"]] + [k for k in rep["scores"] if k not in _HEADLINE and "/" not in k.removeprefix("domain/").removeprefix("general/")]
    for k in keys:
        t = rep["scores"][k]
        lines.append(f"| {k} | {t['served']['n']} | {_s(t['base'])} | {_s(t['adapter'])} | {_s(t['served'])} | "
                     f"{_delta(t['served_vs_adapter'])} | {_delta(t['served_vs_base'])} | {t.get('to_adapter', '-')} |")  # fmt: skip
    kl = rep["scores"].get("general/kl", {}).get("token_weighted")
    if kl:
        lines += ["", f"General KL per token (token-weighted, as in the run's curves): adapter alone {kl['adapter']:.4f}, served {kl['served']:.4f}."]
    if rep.get("routing"):
        lines += ["", "### Routing", ""] + format_router_report(rep["routing"])
        lines += ["", "Intervals are 95% Wilson score intervals; AUROC is each kind against the held-out domain questions."]
    return "\n".join(lines) + "\n"


def add_served_section(run_dir: Path, *, console: Any = None, rep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the served system of ``run_dir`` (unless ``rep`` is given), write ``served.json`` and
    put the section at the end of report.md (replacing an earlier one)."""
    run_dir = Path(run_dir)
    rep = rep if rep is not None else evaluate_served(run_dir, console=console)
    atomic_write_json(run_dir / artifacts.SERVED_JSON, rep)
    report = run_dir / artifacts.REPORT_MD
    if report.exists():
        text = report.read_text(encoding="utf-8")
        cut = text.find("## Served system")
        text = (text[:cut] if cut >= 0 else text.rstrip("\n") + "\n\n") + served_markdown(rep)
        atomic_write_bytes(report, text.encode("utf-8"))
    return rep


def served_report(cfg: Any, run_dir: Path, console: Any) -> dict[str, Any] | None:
    """The pipeline's served-system step: :func:`add_served_section` when ``eval.served_report`` is on
    (the default); ``forgetless eval --served RUN`` gives the same section for a finished run."""
    if not cfg.eval.served_report:
        return None
    if not (Path(run_dir) / artifacts.ADAPTER_DIR / "adapter_config.json").exists():
        console.print("  served: the run exported no adapter, nothing is served; skipped")
        return None
    rep = evaluate_served(run_dir, console=console, allow_remote_code=cfg.model.trust_remote_code)  # the run's own setting
    return add_served_section(run_dir, console=console, rep=rep)


def served_cli(run_dir: Path, *, out: Path | None, batch_size: int, as_json: bool, allow_remote_code: bool = False) -> None:
    """``forgetless eval --served RUN``: print the served-system table (or JSON); write served.json into ``out``."""
    import json

    from rich.console import Console
    from rich.markdown import Markdown

    err = Console(stderr=True)
    rep = evaluate_served(run_dir, batch_size=batch_size, console=err, allow_remote_code=allow_remote_code)
    if out is not None:
        atomic_write_json(Path(out) / artifacts.SERVED_JSON, rep)
        err.print(f"wrote {Path(out) / artifacts.SERVED_JSON}")
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        Console().print(Markdown(served_markdown(rep)))
