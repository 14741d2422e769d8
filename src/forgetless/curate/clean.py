"""Text cleaning and per-record quality filters.

Cleaning is deterministic so the writing pass can redo it instead of keeping cleaned text in
memory. Text inside ``` code fences is never touched by the HTML and symbol rules: chat data often
contains code, and ``<div>`` in an answer about HTML is content, not a scraping remnant.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import numpy as np

from .config import CurateConfig

# C0/C1 controls except \t and \n, zero-width and bidi marks, BOM, line/paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")  # any whitespace but newline (tabs, NBSP, thin spaces...)
_MANY_NEWLINES = re.compile(r"\n{3,}")
_BLOCK_TAGS = re.compile(r"<\s*(script|style)\b[^>]*>.*?<\s*/\s*\1\s*>", re.I | re.S)
_BREAK_TAGS = re.compile(r"<\s*(br|p|/p|div|/div|li|tr|h[1-6]|/h[1-6])\b[^>]*>", re.I)
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(\s[^<>]*)?/?>|<!--.*?-->", re.S)
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]{2,8});")
_FENCE = "```"
_WORD = re.compile(r"\w+")
_SYMBOLS = re.compile(r"[#$%&*+<=>@\\^_`|~{}\[\]]")
# Terms worth flagging when rare: capitalised words and words mixing letters and digits
# (drug names, product codes), not ordinary lower-case vocabulary.
_TERM = re.compile(r"\b(?:[A-Z][a-z]*[A-Za-z]{3,}|[A-Za-z]+\d+[A-Za-z\d]*)\b")


def _outside_fences(text: str, fn: Any) -> str:
    """Apply ``fn`` to the parts of ``text`` that are not inside ``` code fences."""
    if _FENCE not in text:
        return fn(text)
    parts = text.split(_FENCE)
    return _FENCE.join(fn(p) if i % 2 == 0 else p for i, p in enumerate(parts))


def strip_html(text: str) -> str:
    """Remove script/style blocks and tags (block tags become line breaks) and decode entities."""
    if "<" not in text and "&" not in text:
        return text
    text = _BLOCK_TAGS.sub("", text)
    text = _BREAK_TAGS.sub("\n", text)
    text = _TAG.sub("", text)
    return _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)


def normalize_text(text: str, *, html_tags: bool = True) -> str:
    """NFC, controls removed, HTML remnants removed, spaces collapsed, lines trimmed."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if html_tags:
        text = _outside_fences(text, strip_html)
    lines = [_SPACES.sub(" ", ln).strip() for ln in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def line_key(line: str) -> str:
    """The form a line is compared in for boilerplate detection (case and spacing ignored)."""
    return " ".join(line.casefold().split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens: what lengths, shingles and exact-duplicate hashes are computed on."""
    return _WORD.findall(text.casefold())


def terms(text: str) -> set[str]:
    """Candidate domain terms in ``text`` (see :data:`_TERM`)."""
    return set(_TERM.findall(text))


# --- records ---------------------------------------------------------------------------------------


def text_fields(rec: dict[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """``(path, string)`` for every text a record holds: ``text``, each message content, prompt/response."""
    if isinstance(rec.get("text"), str):
        yield ("text",), rec["text"]
    elif isinstance(rec.get("messages"), list):
        for i, m in enumerate(rec["messages"]):
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                yield ("messages", i, "content"), m["content"]
    else:
        for key in ("prompt", "response"):
            if isinstance(rec.get(key), str):
                yield (key,), rec[key]


def record_text(rec: dict[str, Any]) -> str:
    """All of a record's text joined by newlines (what filters, hashes and shingles see)."""
    return "\n".join(s for _, s in text_fields(rec))


def _set_path(rec: dict[str, Any], path: tuple[str | int, ...], value: str) -> None:
    node: Any = rec
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def clean_record(rec: dict[str, Any], cfg: CurateConfig, boilerplate: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A cleaned copy of a (validated) record: every text normalized, boilerplate lines dropped."""
    out = {**rec}
    if "messages" in out:
        out["messages"] = [dict(m) for m in out["messages"]]
    for path, value in list(text_fields(out)):
        text = normalize_text(value, html_tags=cfg.strip_html)
        if boilerplate:
            text = "\n".join(ln for ln in text.split("\n") if line_key(ln) not in boilerplate).strip()
        _set_path(out, path, text)
    return out


def record_lines(rec: dict[str, Any], cfg: CurateConfig) -> list[str]:
    """Normalized non-empty line keys of a record (input of boilerplate counting)."""
    out = []
    for _, value in text_fields(rec):
        for ln in normalize_text(value, html_tags=cfg.strip_html).split("\n"):
            if ln:
                out.append(line_key(ln))
    return out


def quality_reject(text: str, n_words: int, cfg: CurateConfig) -> tuple[str, str] | None:
    """``(reason, detail)`` when a cleaned record fails a quality filter, else None."""
    if not text.strip():
        return "empty", "no text left after cleaning"
    if cfg.min_words and n_words < cfg.min_words:
        return "too_short", f"{n_words} words < min_words {cfg.min_words}"
    if cfg.max_words and n_words > cfg.max_words:
        return "too_long", f"{n_words} words > max_words {cfg.max_words}"
    if cfg.max_symbol_ratio is not None:
        prose = "".join(text.split(_FENCE)[::2])  # even parts are outside code fences
        n_sym = len(_SYMBOLS.findall(prose))
        n_prose_words = max(1, len(_WORD.findall(prose)))
        if n_sym / n_prose_words > cfg.max_symbol_ratio:
            return "symbol_ratio", f"{n_sym} symbols / {n_prose_words} words > {cfg.max_symbol_ratio}"
    if cfg.max_repeated_line_ratio is not None:
        lines = [line_key(ln) for ln in text.split("\n") if ln.strip()]
        if len(lines) >= 4:
            repeats = len(lines) - len(set(lines))
            if repeats / len(lines) > cfg.max_repeated_line_ratio:
                return "repeated_lines", f"{repeats} of {len(lines)} lines repeat > {cfg.max_repeated_line_ratio}"
    return None


# --- bounded-memory counting -----------------------------------------------------------------------


class CountMinSketch:
    """Approximate counts of 64-bit keys in fixed memory (``depth`` x ``width`` uint32 counters).

    Used for line and term document frequencies so memory does not grow with the corpus. Counts
    are never under-estimated; conservative update keeps over-estimates small. Callers that need
    exact counts re-count the few keys the sketch says are frequent.
    """

    _MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5], dtype=np.uint64)

    def __init__(self, width: int = 1 << 20, depth: int = 4) -> None:
        if width & (width - 1):
            raise ValueError("width must be a power of two")
        self.width, self.depth = width, min(depth, len(self._MULT))
        self.table = np.zeros((self.depth, width), dtype=np.uint32)
        self._shift = np.uint64(64 - width.bit_length() + 1)

    def _cols(self, keys: np.ndarray) -> np.ndarray:
        # Multiply-shift hashing: one multiplier per row gives independent-enough columns.
        with np.errstate(over="ignore"):
            return ((keys[None, :] * self._MULT[: self.depth, None]) >> self._shift).astype(np.int64)

    def add(self, keys: np.ndarray) -> None:
        """Count each key once (pass distinct keys per document to count document frequency)."""
        if len(keys) == 0:
            return
        keys = np.unique(keys.astype(np.uint64))
        cols = self._cols(keys)
        rows = np.arange(self.depth)[:, None]
        current = self.table[rows, cols].min(axis=0)
        # Conservative update: raise each counter only up to (current estimate + 1).
        target = current + 1
        np.maximum.at(self.table, (np.broadcast_to(rows, cols.shape), cols), np.broadcast_to(target, cols.shape).astype(np.uint32))

    def query(self, keys: np.ndarray) -> np.ndarray:
        """Estimated counts (upper bounds) of ``keys``."""
        if len(keys) == 0:
            return np.zeros(0, dtype=np.uint32)
        cols = self._cols(keys.astype(np.uint64))
        return self.table[np.arange(self.depth)[:, None], cols].min(axis=0)


def str_hashes(items: list[str] | set[str]) -> np.ndarray:
    """64-bit hashes of strings. Python's ``hash`` is salted per process, which is fine: every
    pass of one curate run happens in the same process."""
    return np.fromiter((hash(s) for s in items), dtype=np.int64, count=len(items)).view(np.uint64)
