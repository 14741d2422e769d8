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
_MANY_NEWLINES = re.compile(r"\n{3,}")
_BLOCK_TAGS = re.compile(r"<\s*(script|style)\b[^>]*>.*?<\s*/\s*\1\s*>", re.I | re.S)
_BREAK_TAGS = re.compile(r"<\s*(br|p|/p|div|/div|li|tr|h[1-6]|/h[1-6])\b[^>]*>", re.I)
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(\s[^<>]*)?/?>|<!--.*?-->", re.S)
_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]{2,8});")
_FENCE = "```"
_WORD = re.compile(r"\w+")
_SYMBOL_CHARS = "#$%&*+<=>@\\^_`|~{}[]"
_SYMBOL_BYTES = _SYMBOL_CHARS.encode("ascii")


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
    """NFC, controls removed, HTML remnants removed, spaces collapsed, lines trimmed.

    Each step first checks cheaply whether it has anything to do: most records need none of them,
    and this runs on every record.
    """
    text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isprintable():  # False for any control, tab or newline
        text = _CONTROL.sub("", text)
    if html_tags and ("<" in text or "&" in text):
        text = _outside_fences(text, strip_html)
    # str.split() splits on every Unicode space (tab, NBSP, thin space...): collapse and trim in one.
    text = "\n".join(" ".join(ln.split()) for ln in text.split("\n"))
    if "\n\n\n" in text:
        text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def line_key(line: str) -> str:
    """The form a line is compared in for boilerplate detection (case and spacing ignored)."""
    return " ".join(line.casefold().split())


# ASCII fast path for tokenizing: every ASCII character that is not a regex word character
# (\w = [A-Za-z0-9_] in ASCII) becomes a space, then str.split. Same tokens as _WORD.findall,
# about 3x faster; non-ASCII text takes the regex.
_ASCII_NONWORD = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum() or c == "_")})


def _tokens(text: str) -> list[str]:
    return text.translate(_ASCII_NONWORD).split() if text.isascii() else _WORD.findall(text)


def words(text: str) -> list[str]:
    """Lower-cased word tokens: what lengths, shingles and exact-duplicate hashes are computed on."""
    return _tokens(text.casefold())


def words_and_terms(text: str, with_terms: bool = True) -> tuple[list[str], set[str]]:
    """:func:`words` and :func:`terms` from one tokenization (the hot path of curate's pass 2)."""
    cased = _tokens(text)
    # Only distinct tokens that are not all lower-case can be terms: a set and one C-level check
    # per token instead of the full test (most tokens are ordinary lower-case words).
    found = {t for t in set(cased) if not t.islower() and _is_term(t)} if with_terms else set()
    return " ".join(cased).casefold().split(), found


def _is_term(t: str) -> bool:
    if len(t) < 4 or not t[0].isalpha():
        return False
    if t.isalpha():
        return t[0].isupper()  # a capitalised word: a name, a product, a drug
    return t.isalnum() and any(ch.isdigit() for ch in t)  # letters then digits: a code (AB12)


def terms(text: str) -> set[str]:
    """Candidate domain terms: capitalised words of 4+ letters and letter+digit codes of 4+
    characters with at least one capital (``AB12``; lower-case ``ab12`` is ordinary text)."""
    return words_and_terms(text)[1]


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


def _field_lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln]


def clean_record(
    rec: dict[str, Any], cfg: CurateConfig, boilerplate: frozenset[str] = frozenset(), removed: list[str] | None = None
) -> dict[str, Any]:
    """A cleaned copy of a (validated) record: every text normalized, boilerplate lines dropped.

    Boilerplate is only stripped from texts of two or more lines: a one-line text that recurs (a
    system prompt, a short answer) is content or a duplicate, never a header. Removed line keys
    are appended to ``removed`` when given (for the report).
    """
    out = {**rec}
    if "messages" in out:
        out["messages"] = [dict(m) for m in out["messages"]]
    for path, value in list(text_fields(out)):
        text = normalize_text(value, html_tags=cfg.strip_html)
        if boilerplate and "\n" in text:
            keep = []
            for ln in text.split("\n"):
                key = line_key(ln)
                if key in boilerplate:
                    if removed is not None:
                        removed.append(key)
                else:
                    keep.append(ln)
            text = "\n".join(keep).strip()
        _set_path(out, path, text)
    return out


def record_lines(rec: dict[str, Any], cfg: CurateConfig) -> list[str]:
    """Line keys of a record's multi-line texts (the input of boilerplate counting)."""
    out = []
    for _, value in text_fields(rec):
        lines = _field_lines(normalize_text(value, html_tags=cfg.strip_html))
        if len(lines) >= 2:
            out.extend(line_key(ln) for ln in lines)
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
        if _FENCE in text:
            prose = "".join(text.split(_FENCE)[::2])  # even parts are outside code fences
            n_prose_words = max(1, len(_WORD.findall(prose)))
        else:
            prose, n_prose_words = text, max(1, n_words)
        raw = prose.encode("utf-8")
        n_sym = len(raw) - len(raw.translate(None, _SYMBOL_BYTES))  # bytes deletion: C speed
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
    are never under-estimated; over-estimates come from collisions, which a width sized to the
    input keeps rare (and boilerplate detection additionally needs a high threshold on big inputs).
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
        """Count every key occurrence (callers pass each document's distinct keys, batched)."""
        if len(keys) == 0:
            return
        cols = self._cols(keys.astype(np.uint64))
        for row in range(self.depth):
            np.add.at(self.table[row], cols[row], 1)

    def query(self, keys: np.ndarray) -> np.ndarray:
        """Estimated counts (upper bounds) of ``keys``."""
        if len(keys) == 0:
            return np.zeros(0, dtype=np.uint32)
        cols = self._cols(keys.astype(np.uint64))
        return self.table[np.arange(self.depth)[:, None], cols].min(axis=0)


def str_hashes(items: list[str] | set[str] | tuple[str, ...]) -> np.ndarray:
    """64-bit hashes of strings. Python's ``hash`` is salted per process, which is fine for pass 1
    (boilerplate lines), which runs in one process; anything hashed in pass 2's worker processes
    uses :func:`word_hashes` instead."""
    return np.fromiter((hash(s) for s in items), dtype=np.int64, count=len(items)).view(np.uint64)


_R = np.uint64(0x100000001B3)  # odd, so invertible modulo 2^64
_R_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))


def word_hashes(tokens: list[str]) -> np.ndarray:
    """Deterministic 64-bit hashes of tokens (which contain no spaces), computed for all at once.

    A polynomial hash over the UTF-8 bytes, from one prefix sum over the space-joined tokens:
    hash(word) = sum(byte_j * R^(j - start)) mod 2^64, then a multiply-xorshift finaliser. Unlike
    Python's ``hash`` it is the same in every process (so curate results are reproducible), and
    unlike hashlib it costs no Python call per token.
    """
    if not tokens:
        return np.zeros(0, dtype=np.uint64)
    b = np.frombuffer(" ".join(tokens).encode("utf-8"), dtype=np.uint8).astype(np.uint64)
    n = len(b)
    with np.errstate(over="ignore"):
        pw = np.full(n, _R, dtype=np.uint64)
        pw[0] = 1
        pw = np.cumprod(pw, dtype=np.uint64)  # R^j, wrapping modulo 2^64
        inv = np.full(n, _R_INV, dtype=np.uint64)
        inv[0] = 1
        inv = np.cumprod(inv, dtype=np.uint64)  # R^-j
        pre = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(b * pw, dtype=np.uint64)])
        spaces = np.nonzero(b == 32)[0]
        starts = np.concatenate([[0], spaces + 1])
        ends = np.concatenate([spaces, [n]])
        h = (pre[ends] - pre[starts]) * inv[starts] + (ends - starts).astype(np.uint64)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
    return h
