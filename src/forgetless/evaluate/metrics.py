"""Text metrics with hand-checkable definitions (SQuAD-style normalisation)."""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD v1.1)."""
    s = s.lower().translate(_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def contains_answer(prediction: str, gold: str) -> float:
    """1.0 if the normalised gold answer appears as a whole-word span of the normalised prediction.

    Instruction-tuned models answer in sentences ("Zorvanex treats Marrowick syndrome."), so exact
    match under-reports knowledge; this is the usual "answer recall" companion metric.
    """
    p, g = f" {normalize_answer(prediction)} ", f" {normalize_answer(gold)} "
    return float(g.strip() != "" and g in p)


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall over normalised tokens (multiset overlap)."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)
