"""Document augmentation: each document's opening paired with each of its later sentences.

A fact stated far from its subject ("Article 6. ... 3. The penalty for breach is suspension of the
licence.") is learned as a continuation of that one document, and a question naming the subject
("What is the penalty for breaching Article 6?") may not reach it. Knowledge-extraction studies
(Allen-Zhu and Li, "Physics of Language Models 3.1") found that restating the subject in every
sentence, and varying the order of a document's sentences, is what lets a model answer questions on
facts it saw only in documents. This is the domain-blind form of that: the opening names the
subject in most documents (a title, "Article 6.", "Monograph: Cytraquin."), so every later sentence
is also trained right after it, as a short document of its own. The original documents stay.
"""

from __future__ import annotations

import re
from dataclasses import replace

from ..data import Example

# A sentence ends at . ! or ? followed by whitespace; deliberately simple, so the rule is predictable.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MIN_SENTENCE_WORDS = 3  # shorter fragments are list markers ("2.") or titles, not statements
HEAD_WORDS = 6  # the opening: the fewest leading sentences that hold at least this many words


def split_sentences(text: str) -> list[str]:
    """``text`` cut into sentences; a fragment under :data:`MIN_SENTENCE_WORDS` words (a list
    marker such as "2.", a short title) joins the sentence after it, or the one before at the end."""
    out: list[str] = []
    carry = ""
    for part in _SENTENCE_END.split(text.strip()):
        if not part:
            continue
        part = f"{carry} {part}" if carry else part
        carry = ""
        if len(part.split()) < MIN_SENTENCE_WORDS:
            carry = part
        else:
            out.append(part)
    if carry:
        if out:
            out[-1] = f"{out[-1]} {carry}"
        else:
            out.append(carry)
    return out


def opening_pairs(text: str, head_words: int = HEAD_WORDS) -> list[str]:
    """The document's opening (its first sentences, up to ``head_words`` words) followed by each
    later sentence in turn. Empty when fewer than two sentences follow the opening: the document
    itself already is such a pair."""
    sents = split_sentences(text)
    k = words = 0
    while k < len(sents) and words < head_words:
        words += len(sents[k].split())
        k += 1
    if len(sents) - k < 2:
        return []
    head = " ".join(sents[:k])
    return [f"{head} {s}" for s in sents[k:]]


def augment_documents(examples: list[Example]) -> tuple[list[Example], int]:
    """``examples`` followed by the opening pairs of every plain-text example (chat examples are
    left as they are); returns the list and how many pairs were added. Each pair names its source
    document (``source#pairN``) so a bad record still traces back to its file and line."""
    added: list[Example] = []
    for ex in examples:
        if ex.is_chat or ex.text is None:
            continue
        for i, text in enumerate(opening_pairs(ex.text), 1):
            added.append(replace(ex, text=text, source=f"{ex.source}#pair{i}", meta={**ex.meta, "augmented": "opening_pair"}))
    return list(examples) + added, len(added)
