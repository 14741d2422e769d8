"""Read training and evaluation data in the formats users already have.

Accepted: JSONL records with ``text``, or ``messages`` (chat), or ``prompt``/``response``; ``.txt``
and ``.md`` files (each file is one document); or a folder of any of these. Every record is checked
here, and a bad one raises :class:`~forgetless.errors.InputError` naming its file, line and field.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .io import iter_jsonl, read_text_file
from .promptformat import plain_answer_spans

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
TEXT_SUFFIXES = (".txt", ".md")
DATA_SUFFIXES = (".jsonl",) + TEXT_SUFFIXES


@dataclass
class Example:
    """One training example: plain text (loss on every token) or a chat (loss on assistant turns only)."""

    text: str | None = None
    messages: list[dict[str, str]] | None = None
    source: str = ""  # "file:line", for error messages and curate's rejects
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_chat(self) -> bool:
        """True for chat examples (``messages``), False for plain text."""
        return self.messages is not None


def record_to_example(rec: dict[str, Any], *, file: str | Path, line: int) -> Example:
    """Validate one JSONL record and turn it into an :class:`Example`."""
    src = f"{file}:{line}"
    extra = {k: v for k, v in rec.items() if k not in ("text", "messages", "prompt", "response")}
    if "text" in rec:
        text = rec["text"]
        if not isinstance(text, str):
            raise InputError(f"must be a string, got {type(text).__name__}", file=file, line=line, field="text")
        if not text.strip():
            raise InputError("is empty", file=file, line=line, field="text")
        return Example(text=text, source=src, meta=extra)
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InputError("must be a non-empty list of {role, content}", file=file, line=line, field="messages")
        clean = []
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise InputError("must be an object with 'role' and 'content'", file=file, line=line, field=where)
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise InputError(f"role must be one of {', '.join(ROLES)}, got {role!r}", file=file, line=line, field=f"{where}.role")
            if not isinstance(content, str):
                raise InputError("must be a string", file=file, line=line, field=f"{where}.content")
            clean.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in clean):
            raise InputError("has no assistant turn to learn from", file=file, line=line, field="messages")
        return Example(messages=clean, source=src, meta=extra)
    if "prompt" in rec or "response" in rec:
        for key in ("prompt", "response"):
            if key not in rec:
                raise InputError("is missing (prompt and response come together)", file=file, line=line, field=key)
            if not isinstance(rec[key], str):
                raise InputError("must be a string", file=file, line=line, field=key)
        msgs = [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["response"]}]
        return Example(messages=msgs, source=src, meta=extra)
    raise InputError("record needs 'text', 'messages' or 'prompt'/'response'", file=file, line=line)


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files named directly, plus every data file (sorted) inside named folders."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in DATA_SUFFIXES)
            if not found:
                raise InputError(f"folder has no {', '.join(DATA_SUFFIXES)} files", file=p)
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise InputError("file not found", file=p)
    return out


def load_file(path: Path) -> list[Example]:
    """Load one data file (JSONL, .txt or .md)."""
    if path.suffix in TEXT_SUFFIXES:
        text = read_text_file(path)
        if not text.strip():
            raise InputError("file is empty", file=path)
        return [Example(text=text, source=f"{path}:1")]
    return [record_to_example(rec, file=path, line=line) for line, rec in iter_jsonl(path)]


def load_examples(paths: list[Path]) -> list[Example]:
    """Load every example from files and folders, in order."""
    examples: list[Example] = []
    for f in expand_paths(paths):
        examples.extend(load_file(f))
    return examples


def require_fields(rec: dict[str, Any], fields: dict[str, type | tuple[type, ...]], *, file: Path, line: int) -> None:
    """Check that ``rec`` has each field with the given type; raise InputError naming the first bad one."""
    for name, typ in fields.items():
        if name not in rec:
            raise InputError("is missing", file=file, line=line, field=name)
        if not isinstance(rec[name], typ) or isinstance(rec[name], bool) and typ is int:
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise InputError(f"must be {want}, got {type(rec[name]).__name__}", file=file, line=line, field=name)


# --- rendering and tokenizing one example (training and domain perplexity share it) -------------

IGNORE = -100


@dataclass
class Tokenized:
    """One example as token ids with labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    replay: bool = False


def _render_chat(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], system_prompt: str | None) -> tuple[str, list[tuple[int, int]]]:
    """Render a chat with the model's template; return the text and the char spans of assistant turns.

    Each assistant span is found by rendering the conversation up to that turn with the generation
    prompt (where the answer starts) and up to and including it (where it ends). This works with any
    template, including ones that inject a default system prompt, without parsing the template.
    """
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    full = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        end = len(tok.apply_chat_template(messages[: i + 1], tokenize=False))
        if full[:end] != tok.apply_chat_template(messages[: i + 1], tokenize=False):
            raise ValueError("chat template is not prefix-stable; cannot locate assistant turns")
        spans.append((start, end))
    return full, spans


def _plain_chat(tok: PreTrainedTokenizerBase, ex: Example, system_prompt: str | None) -> tuple[list[int], list[tuple[int, int]], list[tuple[int, int]]]:
    """A chat in the plain frame (:mod:`forgetless.promptformat`) for a tokenizer without a chat
    template: ids (BOS first, EOS after a final answer), offsets and the answers' character spans."""
    messages = ex.messages or []
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    if any(m["role"] == "assistant" and m["content"] != m["content"].strip() for m in messages):
        # Leading/trailing spaces would move the answer's token boundaries away from evaluation's.
        messages = [{**m, "content": m["content"].strip()} if m["role"] == "assistant" else m for m in messages]
    text, spans = plain_answer_spans(messages)
    enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    if messages[-1]["role"] == "assistant" and tok.eos_token_id is not None:
        # The end of the last answer is learned: a base model otherwise never stops.
        ids.append(tok.eos_token_id)
        offsets.append((len(text), len(text) + 1))
        spans[-1] = (spans[-1][0], len(text) + 1)
    if not spans:
        raise InputError("chat example has no assistant answer to learn from", file=ex.source)
    return ids, offsets, spans


def tokenize_example(tok: PreTrainedTokenizerBase, ex: Example, *, system_prompt: str | None = None) -> Tokenized:
    """Tokenize one example. Text: loss on every token (EOS appended). Chat: loss on assistant turns only.

    A chat on a tokenizer without a chat template (a base model) is rendered in the plain
    ``Question:/Answer:`` frame of :mod:`forgetless.promptformat`, the one evaluation uses.
    """
    replay = bool(ex.meta.get("replay", False))
    if not ex.is_chat:
        ids = tok(ex.text, add_special_tokens=True)["input_ids"]
        if tok.eos_token_id is not None:
            ids = ids + [tok.eos_token_id]
        return Tokenized(ids, list(ids), replay)
    if tok.chat_template:
        text, spans = _render_chat(tok, ex.messages or [], system_prompt)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    else:
        ids, offsets, spans = _plain_chat(tok, ex, system_prompt)
    starts = [s for s, _ in spans]
    labels = []
    for tid, (a, b) in zip(ids, offsets):
        # A token is learned if it starts inside an assistant span (answer text + end-of-turn marker).
        k = bisect.bisect_right(starts, a) - 1
        inside = k >= 0 and spans[k][0] <= a < spans[k][1] and b > a
        labels.append(tid if inside else IGNORE)
    return Tokenized(ids, labels, replay)
