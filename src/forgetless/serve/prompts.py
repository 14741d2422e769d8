"""Render requests into token ids, and mark which tokens are the user's own words.

The router pools hidden states over the user's tokens only. The chat template's own text (the
``<|im_start|>`` markers and, for SmolLM2, a default system prompt that every request shares)
carries no information about the domain but dominates a mean over the whole prompt: measured on
the embedded model, pooling over the template gave a router AUROC of 0.67, the user text alone 0.96.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..promptformat import render_plain


@dataclass
class EncodedPrompt:
    """A prompt as the model sees it, plus the positions of the user's own tokens."""

    ids: list[int]
    user_positions: list[int]  # indices into ``ids`` whose characters come from a user turn

    def __len__(self) -> int:
        return len(self.ids)


def render_chat(tok: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """The chat as the model sees it, ending where the assistant's answer starts.

    Same framing as :func:`forgetless.evaluate.scoring.chat_prompt_ids`: the tokenizer's chat
    template when it has one, otherwise a plain ``Question:/Answer:`` frame.
    """
    if tok.chat_template:
        return tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    return render_plain(messages, add_generation_prompt=add_generation_prompt)


def _user_char_spans(tok: PreTrainedTokenizerBase, text: str, messages: Sequence[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans of the user messages' contents inside the rendered ``text``.

    A message's content is the last occurrence of it in the chat rendered up to and including that
    message (templates close a message right after its content), so a user message that repeats
    the role label or the system prompt is still found at its own place.
    """
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "user" or not m["content"].strip():
            continue
        upto = render_chat(tok, messages[: i + 1], add_generation_prompt=False)
        if not text.startswith(upto):
            upto = text  # a template that is not prefix-stable: search the whole prompt
        for content in (m["content"], m["content"].strip()):  # some templates strip the content
            at = upto.rfind(content)
            if at >= 0:
                spans.append((at, at + len(content)))
                break
    return spans


def _positions_in_spans(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    out = []
    for i, (s, e) in enumerate(offsets):
        if e <= s:
            continue  # special tokens have empty offsets
        if any(s < b and e > a for a, b in spans):
            out.append(i)
    return out


def encode_chat(tok: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]]) -> EncodedPrompt:
    """Token ids of a chat prompt and the positions of its user tokens.

    A prompt with no user text (say, only a system message) pools over every token instead, so the
    router still gets a feature.
    """
    text = render_chat(tok, messages)
    enc = tok(text, add_special_tokens=not bool(tok.chat_template), return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    positions = _positions_in_spans(enc["offset_mapping"], _user_char_spans(tok, text, messages))
    return EncodedPrompt(ids=ids, user_positions=positions or list(range(len(ids))))


def encode_text(tok: PreTrainedTokenizerBase, text: str) -> EncodedPrompt:
    """A raw completion prompt: every token is the user's."""
    ids = list(tok(text, add_special_tokens=True)["input_ids"])
    return EncodedPrompt(ids=ids, user_positions=list(range(len(ids))))


def encode_user_texts(tok: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[EncodedPrompt]:
    """Each text as a one-turn chat from the user: how the router sees calibration data."""
    return [encode_chat(tok, [{"role": "user", "content": t}]) for t in texts]
