"""Planted corpora with known duplicates, for tests and ``bench/curate.py``.

Unique documents are random sequences over a made-up vocabulary (unrelated documents share almost
no shingles), so every similarity in the corpus is one we planted: exact copies (case and spacing
changed), near-duplicates at a known number of word edits, and one templated cluster.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

_SYLLABLES = "ka lo mi ne tru spa vor el quin dra sel fo gat rin bu ost ple ca dem ix".split()


def vocabulary(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct pseudo-words of 2-3 syllables."""
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))))
    return sorted(out)


def edit(words: list[str], n_edits: int, vocab: list[str], rng: random.Random) -> list[str]:
    """``words`` after ``n_edits`` random word substitutions, insertions or deletions."""
    w = list(words)
    for _ in range(n_edits):
        op, i = rng.random(), rng.randrange(len(w))
        if op < 0.4:
            w[i] = rng.choice(vocab)
        elif op < 0.7:
            w.insert(i, rng.choice(vocab))
        elif len(w) > 1:
            del w[i]
    return w


@dataclass
class PlantedCorpus:
    """Records plus the ground truth: which record copies which (0-based record indices)."""

    records: list[dict[str, str]] = field(default_factory=list)
    exact_of: dict[int, int] = field(default_factory=dict)
    near_of: dict[int, int] = field(default_factory=dict)
    template_ids: list[int] = field(default_factory=list)

    def family(self, i: int) -> int:
        """The original a record was copied from (itself for originals)."""
        while i in self.exact_of or i in self.near_of:
            i = self.exact_of.get(i, self.near_of.get(i, i))
        return i

    def write(self, path: Path) -> Path:
        """Write the records as JSONL."""
        with open(path, "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        return path


def planted_corpus(
    n_unique: int,
    *,
    n_exact: int = 0,
    n_near: int = 0,
    edits: tuple[int, ...] = (1, 2, 4, 6),
    n_template: int = 0,
    doc_words: tuple[int, int] = (120, 180),
    seed: int = 0,
) -> PlantedCorpus:
    """A shuffled corpus: unique docs, exact and near copies of some of them, one template cluster.

    With ``doc_words`` around 150, a document is about 1 KB of text.
    """
    rng = random.Random(seed)
    vocab = vocabulary(5000, rng)
    docs: list[tuple[str, int | None, str | None]] = []  # (text, source index, kind)
    originals = []
    for _ in range(n_unique):
        w = [rng.choice(vocab) for _ in range(rng.randint(*doc_words))]
        originals.append(w)
        docs.append((" ".join(w).capitalize() + ".", None, None))
    for _ in range(n_exact):
        src = rng.randrange(n_unique)
        # Case and spacing differ: still the same normalized text.
        docs.append(("  " + " ".join(originals[src]).upper() + " .", src, "exact"))
    for k in range(n_near):
        src = rng.randrange(n_unique)
        w = edit(originals[src], edits[k % len(edits)], vocab, rng)
        docs.append((" ".join(w).capitalize() + ".", src, "near"))
    for _ in range(n_template):
        a, b, c, d, e = (rng.choice(vocab) for _ in range(5))
        docs.append(
            (
                f"Order {rng.randint(1000, 9999)} was placed by {a.title()} for {rng.randint(2, 90)} units of {b}. "
                f"It ships from the {c} warehouse to {d.title()} on day {rng.randint(1, 28)} and the invoice goes to {e}.",
                None,
                "template",
            )
        )
    order = list(range(len(docs)))
    rng.shuffle(order)
    # Originals must come before their copies so "first occurrence is kept" is the right answer.
    pos = {old: new for new, old in enumerate(order)}
    # Swapping only ever moves an original earlier, so after one sweep it precedes all its copies.
    for j, (_, src, _kind) in enumerate(docs):
        if src is not None and pos[j] < pos[src]:
            pos[src], pos[j] = pos[j], pos[src]
    inv = sorted(range(len(docs)), key=lambda j: pos[j])
    corpus = PlantedCorpus()
    new_index = {old: new for new, old in enumerate(inv)}
    for old in inv:
        text, src, kind = docs[old]
        corpus.records.append({"text": text})
        i = new_index[old]
        if kind == "exact":
            corpus.exact_of[i] = new_index[src]  # type: ignore[index]
        elif kind == "near":
            corpus.near_of[i] = new_index[src]  # type: ignore[index]
        elif kind == "template":
            corpus.template_ids.append(i)
    return corpus
