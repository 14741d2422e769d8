"""The general suites in one call: what the training loop runs at every checkpoint.

:func:`general_suite_scores` scores a model on

* ``math``: easy arithmetic and word problems, exact match on the parsed number (generative);
* ``code``: write a Python function, pass@1 on its unit tests in the sandbox (generative);
* ``knowledge_mc``: knowledge and commonsense multiple choice, length-normalised log-likelihood,
  with its two halves also reported as ``knowledge_mc/knowledge`` and ``knowledge_mc/commonsense``.

Generative suites come first: a model that drifts into the domain's style on every chat can keep
its multiple-choice score while its answers fall apart, so MC alone hides forgetting. (The
fourth general measure, chat drift as KL to the base, lives in ``evaluate/drift.py``.)

Every value is a :class:`~forgetless.evaluate.stats.Score` (mean, n, bootstrap 95% CI, per-item
values). With ``cache_key`` the scores are stored in the user cache and reused, so the base model
(scored at step 0 of every run) is only ever scored once per suite version and limit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..cache import cache_dir
from ..io import atomic_write_json
from .codesuite import CODE_FILE, CodeTask, code_passed, load_code_tasks
from .knowledge import KNOWLEDGE_MC, MCItem, load_mc, mc_correct
from .mathsuite import MATH_FILE, MathItem, load_math, math_correct
from .stats import Score, make_score

log = logging.getLogger(__name__)

SUITES: tuple[str, ...] = ("math", "code", "knowledge_mc")
SUITE_FILES: dict[str, Path] = {"math": MATH_FILE, "code": CODE_FILE, "knowledge_mc": KNOWLEDGE_MC}
# Subset sizes for the in-loop evaluation at every checkpoint (measured in bench/eval.py: see
# docs/benchmarks.md); `forgetless eval` uses the full files.
IN_LOOP_LIMITS: dict[str, int] = {"math": 24, "code": 8, "knowledge_mc": 40}
CACHE_VERSION = 1


@lru_cache(maxsize=None)
def _items(suite: str) -> tuple[Any, ...]:
    loader: dict[str, Callable[[Path], Sequence[Any]]] = {"math": load_math, "code": load_code_tasks, "knowledge_mc": load_mc}
    return tuple(loader[suite](SUITE_FILES[suite]))


def suite_items(suite: str, limit: int | None = None) -> list[Any]:
    """The first ``limit`` items of a suite (all with None or 0); files are interleaved by kind,
    so any prefix covers every category."""
    if suite not in SUITES:
        raise ValueError(f"unknown general suite '{suite}' (known: {', '.join(SUITES)})")
    items = list(_items(suite))
    return items[:limit] if limit else items


def _limits(limit_per_suite: int | Mapping[str, int] | None) -> dict[str, int | None]:
    if isinstance(limit_per_suite, Mapping):
        return {s: (limit_per_suite.get(s) or None) for s in SUITES}
    return {s: (limit_per_suite or None) for s in SUITES}


def _cache_file(cache_key: str, suites: Sequence[str], limits: Mapping[str, int | None]) -> Path:
    # The key covers everything the scores depend on besides the model: data file contents,
    # which suites, the subset sizes and the scoring code's version.
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|{cache_key}|{','.join(suites)}|{json.dumps(dict(limits), sort_keys=True)}".encode())
    for s in suites:
        h.update(SUITE_FILES[s].read_bytes())
    return cache_dir("general_suites") / f"{h.hexdigest()[:32]}.json"


def general_suite_scores(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    *,
    limit_per_suite: int | Mapping[str, int] | None = None,
    batch_size: int = 16,
    cache_key: str | None = None,
    suites: Sequence[str] = SUITES,
    timings: dict[str, float] | None = None,
) -> dict[str, Score]:
    """Score ``model`` on the general suites; keys are suite names (plus ``knowledge_mc/<category>``).

    ``limit_per_suite``: the first N items of every suite, or a per-suite mapping such as
    :data:`IN_LOOP_LIMITS`; None (or 0) means the full suite.
    ``cache_key``: a string that identifies the model's weights *exactly* (for the base model:
    its weights and tokenizer fingerprints). Pass it only for a frozen model; never for a model
    that is being trained, whose scores change from one checkpoint to the next.
    ``timings``: if given, filled with seconds spent per suite.
    """
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown general suite(s) {unknown} (known: {', '.join(SUITES)})")
    limits = _limits(limit_per_suite)
    cache_path = _cache_file(cache_key, suites, limits) if cache_key else None
    if cache_path is not None and cache_path.exists():
        try:
            saved = json.loads(cache_path.read_text(encoding="utf-8"))
            return {k: Score.from_dict(v) for k, v in saved["scores"].items()}
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable general-suite cache %s", cache_path)

    was_training = model.training
    model.eval()
    out: dict[str, Score] = {}
    try:
        for suite in suites:
            t0 = time.perf_counter()
            items = suite_items(suite, limits[suite])
            if suite == "math":
                math_items: list[MathItem] = items
                out["math"] = make_score(math_correct(model, tok, math_items, batch_size=batch_size), [it.id for it in math_items])
            elif suite == "code":
                tasks: list[CodeTask] = items
                out["code"] = make_score(code_passed(model, tok, tasks, batch_size=batch_size), [t.id for t in tasks])
            else:
                mc: list[MCItem] = items
                vals = mc_correct(model, tok, mc, batch_size=batch_size)
                out["knowledge_mc"] = make_score(vals, [it.id for it in mc])
                for cat in sorted({it.category for it in mc if it.category}):
                    sel = [(v, it.id) for v, it in zip(vals, mc) if it.category == cat]
                    out[f"knowledge_mc/{cat}"] = make_score([v for v, _ in sel], [i for _, i in sel])
            if timings is not None:
                timings[suite] = time.perf_counter() - t0
    finally:
        if was_training:
            model.train()
    if cache_path is not None:
        atomic_write_json(cache_path, {"cache_key": cache_key, "scores": {k: v.to_dict(with_values=True) for k, v in out.items()}})
    return out


def flatten_scores(scores: Mapping[str, Score], prefix: str = "general/") -> dict[str, float | int]:
    """Flat metrics for a ``metrics.jsonl`` line: ``<prefix><key>`` = value, plus ``_n``, ``_lo``, ``_hi``."""
    flat: dict[str, float | int] = {}
    for k, s in scores.items():
        flat[f"{prefix}{k}"] = s.value
        flat[f"{prefix}{k}_n"] = s.n
        flat[f"{prefix}{k}_lo"] = s.ci_low
        flat[f"{prefix}{k}_hi"] = s.ci_high
    return flat

