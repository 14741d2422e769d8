"""Multiple-choice suites scored by log-likelihood: the general knowledge/commonsense suite and
any user-supplied multiple-choice JSONL (the domain's ``heldout_mc.jsonl`` has the same shape).

Each item is asked as a one-turn chat; every choice is scored as the assistant's answer, and the
model's pick is the choice with the highest *length-normalised* log-likelihood (mean log-prob per
character, as lm-evaluation-harness' ``acc_norm``), so a long correct answer is not beaten by a short wrong one just for being short. The
prompt is run once per item and shared across its choices (:func:`scoring.choice_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import InputError
from ..io import iter_jsonl
from .scoring import answer_ids, chat_prompt_ids, choice_scores

DATA_DIR = Path(__file__).parent / "data"
KNOWLEDGE_MC = DATA_DIR / "knowledge_mc.v1.jsonl"

# "char": mean log-prob per character of the choice (lm-evaluation-harness' acc_norm uses bytes);
# "token": per token; "none": the raw sum (favours short choices).
Normalize = Literal["char", "token", "none"]


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question; ``answer`` is the index of the correct choice."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    category: str = ""


def load_mc(path: str | Path) -> list[MCItem]:
    """Read a multiple-choice JSONL: ``{"question", "choices": [...], "answer": <index>}`` per line.

    ``id`` and ``category`` are optional (default: ``line-N`` and ``""``). Raises :class:`InputError`
    naming file, line and field for a missing or mistyped field or an out-of-range answer.
    """
    items: list[MCItem] = []
    seen: set[str] = set()
    for line, rec in iter_jsonl(path):
        q = rec.get("question")
        if not isinstance(q, str) or not q.strip():
            raise InputError("must be a non-empty string", file=path, line=line, field="question")
        choices = rec.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise InputError("must be a list of at least 2 non-empty strings", file=path, line=line, field="choices")
        ans = rec.get("answer")
        # bool is an int subclass: `true` would silently mean choice 1.
        if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < len(choices):
            raise InputError(f"must be an integer index in 0..{len(choices) - 1}", file=path, line=line, field="answer")
        item_id = str(rec.get("id", f"line-{line}"))
        if item_id in seen:
            raise InputError(f"duplicate id '{item_id}'", file=path, line=line, field="id")
        seen.add(item_id)
        items.append(MCItem(item_id, q, tuple(choices), ans, str(rec.get("category", ""))))
    return items


def pick(scores: Sequence[tuple[float, int]], choices: Sequence[str], normalize: Normalize = "char") -> int:
    """Index of the best choice from its ``(sum log-prob, n tokens)`` pairs; ties go to the first."""
    if normalize == "char":
        keyed = [lp / max(len(c), 1) for (lp, _), c in zip(scores, choices)]
    elif normalize == "token":
        keyed = [lp / n for lp, n in scores]
    else:
        keyed = [lp for lp, _ in scores]
    return max(range(len(keyed)), key=lambda i: keyed[i])


def mc_correct(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    items: Sequence[MCItem],
    *,
    batch_size: int = 16,
    normalize: Normalize = "char",
) -> list[float]:
    """1.0/0.0 per item: does the model's highest-likelihood choice match the answer?"""
    scored = mc_choice_scores(model, tok, items, batch_size=batch_size)
    return [float(pick(s, it.choices, normalize) == it.answer) for s, it in zip(scored, items)]


def mc_choice_scores(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, items: Sequence[MCItem], *, batch_size: int = 16
) -> list[list[tuple[float, int]]]:
    """Raw ``(sum log-prob, n tokens)`` of every choice of every item (for custom decision rules)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    # No EOS after the choice: the model may well go on to explain, and we only ask which answer
    # it finds most likely, not whether it would stop right after it.
    encoded = [(chat_prompt_ids(tok, it.question), [answer_ids(tok, c, with_eos=False) for c in it.choices]) for it in items]
    return choice_scores(model, encoded, batch_size=batch_size, pad_id=pad)


def items_from_records(records: Sequence[dict]) -> list[MCItem]:
    """MC items from already-validated records (e.g. ``evaluate.domain.load_mc``'s dicts), so the
    domain suite can use the same shared-prompt scorer (:func:`mc_correct`)."""
    return [
        MCItem(str(r.get("id", i)), r["question"], tuple(r["choices"]), int(r["answer"]), str(r.get("split", r.get("category", ""))))
        for i, r in enumerate(records)
    ]
