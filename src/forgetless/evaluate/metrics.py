"""Text metrics with hand-checkable definitions (SQuAD-style normalisation)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

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


# --- the general suites ---------------------------------------------------------------------------

_ROUGE_SCORER = None


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), via Google's ``rouge-score``.

    Uses its default tokenizer (lowercase, alphanumeric tokens) without stemming, so scores are
    comparable with other papers' ROUGE-L numbers. Two empty strings score 0.0 (rouge-score's rule).
    """
    global _ROUGE_SCORER
    if _ROUGE_SCORER is None:
        from rouge_score import rouge_scorer

        _ROUGE_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_ROUGE_SCORER.score(gold, prediction)["rougeL"].fmeasure)


_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
# "7 + 5 = 12", "the answer is 16", "equals 25": the number right after one of these is the answer
# even when the model keeps talking afterwards (greedy answers are cut at max_new_tokens).
_ANSWER_CUE = re.compile(r"(?:=|\bis\b|\bequals\b|\banswer:?)\s*\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)", re.IGNORECASE)


def _to_number(token: str) -> float | None:
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def parse_number(text: str) -> float | None:
    """The numeric answer in a model's reply: the number after the first ``=``/"is"/"equals"/"answer",
    else the last number in the text, else None. Thousands separators are ignored ("1,000" = 1000).
    """
    m = _ANSWER_CUE.search(text)
    if m:
        return _to_number(m.group(1))
    nums = _NUMBER.findall(text)
    return _to_number(nums[-1]) if nums else None


def numeric_match(prediction: str, gold: float, *, tol: float = 1e-6) -> float:
    """1.0 if the number parsed from ``prediction`` equals ``gold`` (within ``tol``), else 0.0."""
    value = parse_number(prediction)
    return float(value is not None and abs(value - gold) <= tol)


def kl_divergence(p_logprobs: Sequence[float], q_logprobs: Sequence[float]) -> float:
    """KL(p || q) in nats from two log-probability vectors over the same support.

    Terms where p is 0 contribute 0 (the 0 log 0 = 0 convention); q = 0 where p > 0 gives inf.
    """
    import math

    if len(p_logprobs) != len(q_logprobs):
        raise ValueError(f"supports differ: {len(p_logprobs)} vs {len(q_logprobs)}")
    total = 0.0
    for lp, lq in zip(p_logprobs, q_logprobs):
        if lp == -math.inf:
            continue
        if lq == -math.inf:
            return math.inf
        total += math.exp(lp) * (lp - lq)
    return total
