"""Tokenizer fertility on the user's corpus: how badly the base tokenizer splits domain words.

Fertility is tokens per word. A *word* is a maximal run of letters (:data:`extend.WORD_RE`); a
token counts for every word its character span overlaps, so a token carrying the leading space
(``Ġword``) counts once for its word. Numbers are left out on purpose (tokenizers split digits by
design). The sequence-length saving is *measured*: the domain text is re-tokenized with a copy of
the tokenizer extended by the chosen terms, not estimated from piece counts.
"""

from __future__ import annotations

import bisect
import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..data import Example, load_examples
from .extend import WORD_RE, add_terms_to_tokenizer, piece_ids, select_terms

GENERAL_SAMPLE = "general_text.v1.jsonl"  # versioned: a change of sample is a new file name


def general_sample_path() -> Path:
    """The general-text sample shipped with forgetless (40 short everyday, technical and code texts)."""
    return Path(str(resources.files("forgetless.tokens") / "data" / GENERAL_SAMPLE))


def example_text(ex: Example) -> str:
    """The text an example contributes: plain text, or the chat turns' contents joined by newlines."""
    if ex.text is not None:
        return ex.text
    return "\n".join(m["content"] for m in ex.messages or [])


def load_texts(paths: Sequence[Path]) -> list[str]:
    """Texts of every example in the given files/folders (any format :func:`load_examples` reads)."""
    return [example_text(e) for e in load_examples(list(paths))]


@dataclass
class Fertility:
    """Fertility statistics of one corpus under one tokenizer."""

    words: int
    tokens: int  # token-word overlaps summed over words (= tokens inside words)
    fertility: float  # tokens per word
    share_ge2: float  # share of words split into >= 2 pieces
    share_ge4: float  # share of words split into >= 4 pieces
    seq_tokens: int  # all tokens of the texts (what training sees)


def word_piece_counts(tok: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[tuple[str, int]]:
    """``(word, number of tokens overlapping it)`` for every word occurrence in ``texts``, in order."""
    if not texts:
        return []
    enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    out: list[tuple[str, int]] = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        starts = [s for s, _ in offsets]
        for m in WORD_RE.finditer(text):
            ws, we = m.span()
            # Tokens are in text order: only those starting before the word's end can overlap it,
            # and among them only the ones ending after its start do. Look back a few for wide tokens.
            hi = bisect.bisect_left(starts, we)
            n = sum(1 for s, e in offsets[max(0, hi - 64) : hi] if e > ws and s < we)
            out.append((m.group(), max(n, 1)))
    return out


def fertility(tok: PreTrainedTokenizerBase, texts: Sequence[str]) -> Fertility:
    """Tokens per word and the share of words split into >= 2 and >= 4 pieces."""
    counts = word_piece_counts(tok, texts)
    n = len(counts)
    toks = sum(c for _, c in counts)
    seq = sum(len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]) if texts else 0
    return Fertility(
        words=n,
        tokens=toks,
        fertility=toks / n if n else 0.0,
        share_ge2=sum(c >= 2 for _, c in counts) / n if n else 0.0,
        share_ge4=sum(c >= 4 for _, c in counts) / n if n else 0.0,
        seq_tokens=seq,
    )


def term_fertility(tok: PreTrainedTokenizerBase, texts: Sequence[str], terms: Sequence[str]) -> dict[str, float]:
    """Mean pieces per occurrence of each term (as a whole word) in ``texts``; terms never seen are left out."""
    wanted = set(terms)
    per: dict[str, list[int]] = {}
    for word, n in word_piece_counts(tok, texts):
        if word in wanted:
            per.setdefault(word, []).append(n)
    return {t: sum(v) / len(v) for t, v in per.items()}


def analyze(
    tok: PreTrainedTokenizerBase,
    domain: Sequence[str],
    general: Sequence[str],
    *,
    top_k: int = 20,
    min_count: int = 2,
    min_pieces: int = 3,
    terms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fertility on domain vs general text, the top domain terms, and the measured saving from adding them.

    ``terms`` (e.g. from a terms file) replaces the automatic choice of the top ``top_k`` terms.
    ``tok`` is not modified: the saving is measured on a copy.
    """
    chosen = list(terms) if terms is not None else select_terms(tok, domain, top_k, min_count=min_count, min_pieces=min_pieces)
    counts = Counter(w for t in domain for w in WORD_RE.findall(t))
    top = []
    for t in chosen:
        ids = piece_ids(tok, " " + t)
        top.append(
            {
                "term": t,
                "count": counts.get(t, 0),
                "pieces": len(ids),
                "split": [tok.decode([i]) for i in ids],
                "tokens_saved": counts.get(t, 0) * (len(ids) - 1),
            }
        )
    ext = copy.deepcopy(tok)
    forms, _, _ = add_terms_to_tokenizer(ext, chosen)
    dom_before, dom_after = fertility(tok, domain), fertility(ext, domain)
    gen_before, gen_after = fertility(tok, general), fertility(ext, general)
    saved = dom_before.seq_tokens - dom_after.seq_tokens
    return {
        "tokenizer_vocab": len(tok),
        "domain": {"texts": len(domain), **asdict(dom_before)},
        "general": {"texts": len(general), **asdict(gen_before)},
        "top_terms": top,
        "with_terms": {
            "terms": len(chosen),
            "new_tokens": len(forms),
            "domain": asdict(dom_after),
            "general": asdict(gen_after),
            "domain_tokens_saved": saved,
            "domain_saving": saved / dom_before.seq_tokens if dom_before.seq_tokens else 0.0,
            "term_fertility_before": _mean(term_fertility(tok, domain, chosen)),
            "term_fertility_after": _mean(term_fertility(ext, domain, chosen)),
        },
    }


def _mean(d: dict[str, float]) -> float:
    return sum(d.values()) / len(d) if d else 0.0


def show_split(pieces: Sequence[str]) -> str:
    """Pieces joined by a middle dot, spaces shown as ␣: ``␣Z·or·van·ex``."""
    return "·".join(p.replace(" ", "␣").replace("\n", "⏎") for p in pieces)


def to_markdown(report: dict[str, Any]) -> str:
    """The analysis as Markdown (what ``fertility.md`` holds)."""
    d, g, w = report["domain"], report["general"], report["with_terms"]
    lines = [
        "# Tokenizer fertility",
        "",
        "| corpus | texts | words | tokens/word | words >= 2 pieces | words >= 4 pieces | sequence tokens |",
        "|---|---|---|---|---|---|---|",
        f"| domain | {d['texts']} | {d['words']} | {d['fertility']:.3f} | {d['share_ge2']:.1%} | {d['share_ge4']:.1%} | {d['seq_tokens']} |",
        f"| general | {g['texts']} | {g['words']} | {g['fertility']:.3f} | {g['share_ge2']:.1%} | {g['share_ge4']:.1%} | {g['seq_tokens']} |",
        f"| domain + {w['terms']} terms | {d['texts']} | {w['domain']['words']} | {w['domain']['fertility']:.3f} | "
        f"{w['domain']['share_ge2']:.1%} | {w['domain']['share_ge4']:.1%} | {w['domain']['seq_tokens']} |",
        "",
        f"Adding the {w['terms']} terms below ({w['new_tokens']} new tokens) shortens the domain text by "
        f"{w['domain_tokens_saved']} tokens ({w['domain_saving']:.1%}); the terms' own fertility goes from "
        f"{w['term_fertility_before']:.2f} to {w['term_fertility_after']:.2f} pieces per occurrence. "
        f"General text: {g['seq_tokens']} tokens before, {w['general']['seq_tokens']} after.",
        "",
        "## Top domain terms (ranked by tokens saved = count x (pieces - 1))",
        "",
        "| term | count | pieces | split | tokens saved |",
        "|---|---|---|---|---|",
    ]
    for t in report["top_terms"]:
        lines.append(f"| {t['term']} | {t['count']} | {t['pieces']} | `{show_split(t['split'])}` | {t['tokens_saved']} |")
    return "\n".join(lines) + "\n"
