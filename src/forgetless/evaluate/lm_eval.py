"""lm-evaluation-harness on the in-memory model (extra: ``pip install forgetless[lm-eval]``).

For users who can reach the Hugging Face hub, :func:`run_lm_eval` runs any named harness task
(``hellaswag``, ``arc_easy``, ``gsm8k``, ...) on a model already in memory: the base, or the base
with a run's adapter. Offline, :func:`local_mc_task` turns a forgetless multiple-choice JSONL
(``question``, ``choices``, ``answer``) into a harness task config, so the same machinery runs on
local files.

The model goes to the harness through its own ``HFLM`` wrapper (``pretrained=<model object>``):
the harness' request batching, caching and metrics stay exactly the harness'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ForgetlessError


def _require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise ForgetlessError("lm-evaluation-harness is not installed: pip install 'forgetless[lm-eval]'") from None
    return lm_eval


def local_mc_task(path: str | Path, name: str = "forgetless_local_mc") -> dict[str, Any]:
    """A harness task config for a local multiple-choice JSONL (one ``test`` split, accuracy).

    The question is the context and each choice is scored as its continuation (``acc``: raw
    log-likelihood, ``acc_norm``: per-byte normalised, as the harness defines them).
    """
    path = Path(path).resolve()
    if not path.exists():
        raise ForgetlessError(f"{path}: file not found")
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def run_lm_eval(
    model: Any,
    tok: Any,
    tasks: Sequence[str | dict[str, Any]],
    *,
    batch_size: int = 16,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run harness tasks on an in-memory model; returns ``{task: {metric: value, ...}}``.

    ``tasks``: harness task names (downloaded from the hub by the harness) and/or config dicts
    such as :func:`local_mc_task`'s. ``limit``: the harness' per-task example limit. Each task's
    dict also holds ``n``, the number of examples it was scored on.
    """
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    # Indexing the harness' thousands of built-in task files takes most of a minute; only do it
    # when a task is asked for by name.
    manager = TaskManager(include_defaults=any(isinstance(t, str) for t in tasks))
    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False
    )
    if out is None:  # non-zero ranks in distributed runs; never the case here
        return {}
    results = {task: dict(metrics) for task, metrics in out["results"].items()}
    for task, counts in out.get("n-samples", {}).items():
        results.setdefault(task, {})["n"] = counts.get("effective", counts.get("original"))
    return results
