"""How well a calibrated router sorts real traffic: per kind of query, AUROC and rates with intervals.

Kinds of query (each a list of user messages):

* ``domain``: held-out domain questions, phrased differently from the training data: they should
  go to the adapter;
* ``general``: everyday prompts the router was not calibrated on: they should go to the base;
* ``neighbour/<name>``: questions from neighbouring specialties (``serve/data/neighbour_*.jsonl``):
  they share the domain's question shapes and jargon density, but the adapter knows nothing of
  them, so they should go to the base too.

Each prompt is encoded as a one-turn chat exactly as the server encodes it and scored by
:meth:`Router.score`, the code the server runs. For every negative kind the AUROC is against the
domain questions (1.0: every one of them scores further out than every domain question).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..data import require_fields
from ..io import iter_jsonl, read_jsonl
from .prompts import encode_chat
from .router import Router, auroc

NEIGHBOUR_FILES = {"veterinary": "neighbour_vet.v1.jsonl", "legal": "neighbour_legal.v1.jsonl"}
GENERAL_FILE = "general_prompts.jsonl"
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k / n`` (95% by default); (nan, nan) for n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n,
    which is where a router's rates live.
    """
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def rate(k: int, n: int) -> dict[str, Any]:
    """``{"k", "n", "rate", "ci_low", "ci_high"}`` for k successes out of n."""
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else math.nan, "ci_low": lo, "ci_high": hi}


def _data_path(name: str) -> Path:
    return Path(str(resources.files("forgetless.serve") / "data" / name))


def load_neighbours() -> dict[str, list[str]]:
    """The shipped neighbouring-specialty question sets, by specialty."""
    out: dict[str, list[str]] = {}
    for name, file in NEIGHBOUR_FILES.items():
        path = _data_path(file)
        recs = []
        for line, rec in iter_jsonl(path):
            require_fields(rec, {"prompt": str}, file=path, line=line)
            recs.append(rec["prompt"])
        out[name] = recs
    return out


def heldout_general(exclude: Sequence[str] = ()) -> list[str]:
    """The serve stage's own general prompts, minus any the router was calibrated on."""
    skip = set(exclude)
    return [p for p in (r["prompt"] for r in read_jsonl(_data_path(GENERAL_FILE))) if p not in skip]


def route_scores(router: Router, model: Any, tok: Any, texts: Sequence[str], *, system_prompt: str | None = None,
                 batch_size: int = 32) -> np.ndarray:  # fmt: skip
    """Router score of each text sent as one user message (with the run's system prompt, if any), as the server scores it."""
    if not texts:
        return np.empty(0, dtype=np.float64)  # e.g. a run with QA items but no multiple choice
    msgs = [([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": t}] for t in texts]
    prompts = [encode_chat(tok, m) for m in msgs]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return np.asarray(router.score(model, prompts, pad_id=pad, batch_size=batch_size), dtype=np.float64)


def router_report(router: Router, scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per kind: n, the share sent to its expected side with a Wilson interval, and AUROC vs ``domain``.

    ``scores`` maps a kind (``domain``, ``general``, ``neighbour/<name>``, ...) to its router scores;
    ``domain`` must be present. The confusion matrix counts each kind per route.
    """
    dom = np.asarray(scores["domain"])
    kinds: dict[str, Any] = {}
    confusion: dict[str, dict[str, int]] = {}
    for kind, s in scores.items():
        s = np.asarray(s)
        to_base = int(np.sum(s > router.threshold))
        confusion[kind] = {"adapter": len(s) - to_base, "base": to_base}
        if kind == "domain":
            kinds[kind] = {"expected": "adapter", **rate(len(s) - to_base, len(s))}
        else:
            kinds[kind] = {"expected": "base", **rate(to_base, len(s)), "auroc": auroc(dom, s) if len(dom) and len(s) else math.nan}
    return {"method": router.method, "threshold": router.threshold, "kinds": kinds, "confusion": confusion}


def format_router_report(rep: Mapping[str, Any]) -> list[str]:
    """Markdown table lines of :func:`router_report`."""
    lines = ["| queries | n | expected route | share there [95% Wilson] | AUROC vs domain |", "|---|---|---|---|---|"]
    for kind, k in rep["kinds"].items():
        auc = f"{k['auroc']:.3f}" if "auroc" in k and not math.isnan(k["auroc"]) else "-"
        lines.append(f"| {kind} | {k['n']} | {k['expected']} | {k['rate']:.3f} [{k['ci_low']:.3f}, {k['ci_high']:.3f}] | {auc} |")
    return lines
