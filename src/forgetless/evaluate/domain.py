"""Domain suite: held-out QA (exact match, token F1, answer recall, ROUGE-L), multiple choice
(length-normalised log-likelihood) and held-out perplexity, from user JSONL files.

Records may carry a ``split`` field (e.g. the sample domain's ``doc_only`` drugs, known only from
documents); every score is then also reported per split.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ..data import Example, load_examples, require_fields, tokenize_example
from ..errors import InputError
from ..io import iter_jsonl
from . import metrics
from ..promptformat import PLAIN, PLAIN_STOP_STRINGS, prompt_format
from .scoring import answer_ids, chat_prompt_ids, continuation_scores, generate_greedy, generate_greedy_until


@dataclass
class DomainData:
    """Held-out domain evaluation data."""

    qa: list[dict] = field(default_factory=list)
    mc: list[dict] = field(default_factory=list)
    text: list[Example] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when there is nothing to evaluate."""
        return not (self.qa or self.mc or self.text)


def load_qa(path: Path) -> list[dict]:
    """QA records: 'question' and 'answer' strings (optional 'split')."""
    out = []
    for line, rec in iter_jsonl(path):
        require_fields(rec, {"question": str, "answer": str}, file=path, line=line)
        out.append(rec)
    return out


def load_mc(path: Path) -> list[dict]:
    """MC records: 'question', 'choices' (>= 2 strings) and 'answer' (index into choices)."""
    out = []
    for line, rec in iter_jsonl(path):
        require_fields(rec, {"question": str, "choices": list, "answer": int}, file=path, line=line)
        ch = rec["choices"]
        if len(ch) < 2 or not all(isinstance(c, str) for c in ch):
            raise InputError("must be a list of at least 2 strings", file=path, line=line, field="choices")
        if not 0 <= rec["answer"] < len(ch):
            raise InputError(f"index {rec['answer']} out of range for {len(ch)} choices", file=path, line=line, field="answer")
        out.append(rec)
    return out


def load_domain(qa: Path | None, mc: Path | None, text: Path | None) -> DomainData:
    """Load whichever domain evaluation files are configured."""
    return DomainData(
        qa=load_qa(qa) if qa else [],
        mc=load_mc(mc) if mc else [],
        text=load_examples([text]) if text else [],
    )


def _splits(records: list[dict]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if "split" in r:
            groups[str(r["split"])].append(i)
    return groups


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


@torch.no_grad()
def domain_scores(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerBase,
    data: DomainData,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 24,
    system_prompt: str | None = None,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Score the domain suite. Returns (metrics, per-item values for confidence intervals)."""
    from rouge_score import rouge_scorer

    out: dict[str, float] = {}
    items: dict[str, list[float]] = {}
    pad = tok.pad_token_id or 0
    if data.qa:
        prompts = [chat_prompt_ids(tok, r["question"], system=system_prompt) for r in data.qa]
        if prompt_format(tok) == PLAIN:
            # A base model runs on past its answer into the next "Question:": the frame's stop
            # strings end it (and end decoding of the row early).
            texts = generate_greedy_until(model, tok, prompts, max_new_tokens=max_new_tokens, stop_strings=PLAIN_STOP_STRINGS, batch_size=batch_size)
            preds = [t.strip() for t in texts]
        else:
            gens = generate_greedy(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
            preds = [tok.decode(g, skip_special_tokens=True).strip() for g in gens]
        rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        per = {
            "qa_em": [metrics.exact_match(p, r["answer"]) for p, r in zip(preds, data.qa)],
            "qa_f1": [metrics.token_f1(p, r["answer"]) for p, r in zip(preds, data.qa)],
            "qa_recall": [metrics.contains_answer(p, r["answer"]) for p, r in zip(preds, data.qa)],
            "qa_rougeL": [rouge.score(r["answer"], p)["rougeL"].fmeasure for p, r in zip(preds, data.qa)],
        }
        # Perplexity of the gold answers given the question: how well the model "knows" them.
        pairs = [(p, answer_ids(tok, r["answer"])) for p, r in zip(prompts, data.qa)]
        scores = continuation_scores(model, pairs, batch_size=batch_size, pad_id=pad)
        per["qa_nll"] = [-s / n for s, n in scores]
        for name, vals in per.items():
            out[f"domain/{name}"] = _mean(vals)
            items[f"domain/{name}"] = vals
            for split, idx in _splits(data.qa).items():
                out[f"domain/{name}/{split}"] = _mean([vals[i] for i in idx])
        total_nll = sum(-s for s, _ in scores) / sum(n for _, n in scores)
        out["domain/ppl"] = math.exp(total_nll)
        out["_samples/qa"] = preds[:3]  # type: ignore[assignment]
    if data.mc:
        from .knowledge import pick
        from .scoring import choice_scores

        # Each prompt runs once for all its choices (shared-prompt scorer). No EOS after a choice:
        # a tuned model answers in sentences, so EOS right after a bare value is improbable for
        # *every* choice, and with length normalisation it made the longest choice win (measured:
        # accuracy stuck at chance while QA recall rose from 0 to 0.68).
        encoded = [
            (chat_prompt_ids(tok, r["question"], system=system_prompt), [answer_ids(tok, c, with_eos=False) for c in r["choices"]])
            for r in data.mc
        ]
        scored = choice_scores(model, encoded, batch_size=batch_size, pad_id=pad)
        # Length-normalised per character (lm-eval's acc_norm): longer choices are not penalised.
        acc = [float(pick(sc, r["choices"], "char") == r["answer"]) for sc, r in zip(scored, data.mc)]
        out["domain/mc_acc"] = _mean(acc)
        items["domain/mc_acc"] = acc
        for split, idx in _splits(data.mc).items():
            out[f"domain/mc_acc/{split}"] = _mean([acc[i] for i in idx])
    if data.text:
        pairs = []
        for ex in data.text:
            t = tokenize_example(tok, ex, system_prompt=system_prompt)
            # Score every labelled token after the first; a 1-token prompt keeps the shapes simple.
            pairs.append((t.input_ids[:1], t.input_ids[1:]))
        scores = continuation_scores(model, pairs, batch_size=batch_size, pad_id=pad)
        out["domain/text_ppl"] = math.exp(sum(-s for s, _ in scores) / max(1, sum(n for _, n in scores)))
    return out, items
