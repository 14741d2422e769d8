"""Replay mixing for a user's ``datasets.Dataset``: general rows in, marked for the KL term.

The draw is forgetless' own (:func:`forgetless.train.dataset.draw_replay`): replay rows make up
``ratio`` of the tokens (of the rows, without a tokenizer), drawn in a seeded order.
"""

from __future__ import annotations

from typing import Any

from ..adapter import adapter_off
from ..train.dataset import draw_replay
from .loss import REPLAY


def _size(tok: Any, row: dict[str, Any]) -> int:
    """Tokens of one row in any of the usual SFT formats (text, messages, prompt/completion)."""
    if row.get("messages"):
        return len(tok.apply_chat_template(row["messages"], tokenize=True))
    if row.get("input_ids") is not None:
        return len(row["input_ids"])
    text = row.get("text") or "".join(str(row.get(k) or "") for k in ("prompt", "completion", "response"))
    return len(tok(text, add_special_tokens=False)["input_ids"])


def mix_replay(dataset: Any, replay: Any, ratio: float, *, tokenizer: Any = None, seed: int = 0) -> Any:
    """``dataset`` plus rows of ``replay`` making up ``ratio`` of the result, with a ``replay`` column.

    Both are ``datasets.Dataset`` with the same columns (e.g. both ``messages``). Rows of ``dataset``
    get ``replay=False``, drawn replay rows ``replay=True``; the trainer shuffles them together.
    With ``tokenizer``, ``ratio`` is a share of tokens (as in ``forgetless run``), else of rows.
    """
    from datasets import concatenate_datasets

    if not 0 <= ratio < 1:
        raise ValueError(f"replay ratio must be in [0, 1), got {ratio}")
    if set(dataset.column_names) != set(replay.column_names):
        raise ValueError(f"the replay dataset's columns {sorted(replay.column_names)} differ from the training dataset's {sorted(dataset.column_names)}")
    size = (lambda row: _size(tokenizer, row)) if tokenizer is not None else (lambda row: 1)
    idx = draw_replay(sum(size(r) for r in dataset), [size(r) for r in replay], ratio, seed=seed)
    domain = dataset.add_column(REPLAY, [False] * len(dataset))
    if not idx:
        return domain
    drawn = replay.select(idx).add_column(REPLAY, [True] * len(idx))
    return concatenate_datasets([domain, drawn.cast(domain.features)])


def base_replay(model: Any, tokenizer: Any, *, n: int | None = None, max_new_tokens: int = 64, base_fingerprint: str | None = None) -> Any:
    """The base model's own answers to forgetless' general replay prompts, as a ``messages`` dataset.

    What ``forgetless run`` replays when it has no replay file: generated once per base (greedy,
    adapter off) and cached. ``n``: the first n prompts (default: all 200).
    """
    from datasets import Dataset

    from ..curate.replay import load_prompts, self_generated_replay
    from .callback import base_weights_fingerprint

    key = base_fingerprint or base_weights_fingerprint(model)
    with adapter_off(model):
        recs = self_generated_replay(model, tokenizer, n=n or len(load_prompts()), max_new_tokens=max_new_tokens, cache_key=key)
    return Dataset.from_list([{"messages": r["messages"]} for r in recs])

