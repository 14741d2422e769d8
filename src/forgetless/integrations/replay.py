"""Replay rows in a user's ``datasets.Dataset``: mixed in, marked, and collated for the KL term.

The draw is forgetless' own (:func:`forgetless.train.dataset.draw_replay`): replay rows make up
``ratio`` of the tokens (of the rows, without a tokenizer), drawn in a seeded order. The
``replay`` column marks them; :class:`ReplayCollator` carries the mark into each batch.
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapter import adapter_off
from ..train.dataset import IGNORE, PackedDataset, draw_replay

REPLAY = "replay"  # the dataset column that marks replay rows


class ReplayCollator:
    """Wraps a data collator: takes the ``replay`` flag off each example, collates the rest, and
    adds it back as a boolean ``replay`` tensor (one per row).

    ``kl_only``: replay rows' labels move to ``kl_labels`` and leave ``labels``, so the language-model
    loss covers domain rows only and the KL-to-base term alone trains replay rows, as in
    ``forgetless run`` (``train.replay_ce: false``).
    """

    def __init__(self, inner: Any, *, kl_only: bool) -> None:
        self.inner = inner
        self.kl_only = kl_only

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        flags = []
        rest = []
        for ex in examples:
            ex = dict(ex)
            flag = ex.pop(REPLAY, False)  # evaluation sets have no replay rows
            if isinstance(flag, (list, tuple)):
                raise ValueError("a training row holds several examples' replay flags (packed rows): turn packing off for replay KL")
            flags.append(bool(flag))
            rest.append(ex)
        batch = self.inner(rest)
        replay = torch.tensor(flags)
        if batch["input_ids"].shape[0] != len(flags):
            raise ValueError("the collator merged rows (padding-free batches): replay KL needs one example per row")
        batch[REPLAY] = replay
        if self.kl_only:
            batch["kl_labels"] = torch.where(replay[:, None], batch["labels"], IGNORE)
            batch["labels"] = torch.where(replay[:, None], IGNORE, batch["labels"])
        return batch


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


def replay_flags(dataset: Any) -> list[bool] | None:
    """Each training row's replay flag: forgetless' packed rows, or a ``replay`` column."""
    if isinstance(dataset, PackedDataset):
        return [r.replay for r in dataset.rows]
    cols = getattr(dataset, "column_names", None)
    if cols is not None and REPLAY in cols:
        return [bool(x) for x in dataset[REPLAY]]
    return None
