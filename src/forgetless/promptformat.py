"""How a conversation is turned into text for a model: its chat template, or a plain frame.

Instruct models ship a chat template and forgetless uses it everywhere. A base (pretrained) model,
such as the embedded ``gemma3-270m``, has none; for it every stage uses one documented plain
frame, so training, evaluation, the KL reference, replay and serving all see the same text::

    System: <system message>        (only when there is one)
    Question: <user message>
    Answer: <assistant message>

Turns are joined by a newline; a prompt for a new answer ends in ``Answer:`` and the answer's
tokens are those of ``" " + answer`` (so ``Answer: Paris`` is tokenized as in running text).
Training on this frame takes the loss on the answers (and on EOS after the last one), like the
assistant turns of a templated chat. A base model does not stop at the end of an answer on its
own: generated plain-frame answers are cut at :data:`PLAIN_STOP_STRINGS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CHAT_TEMPLATE = "chat_template"
PLAIN = "plain"
PLAIN_LABELS = {"system": "System", "user": "Question", "assistant": "Answer"}
# A blank line, or the frame's own next question, ends a plain-frame answer.
PLAIN_STOP_STRINGS = ("\n\n", "\nQuestion:")


def prompt_format(tok: Any) -> str:
    """``"chat_template"`` when the tokenizer has a chat template, else ``"plain"``."""
    return CHAT_TEMPLATE if getattr(tok, "chat_template", None) else PLAIN


def render_plain(messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """The plain frame of a conversation (see the module docstring)."""
    parts = [f"{PLAIN_LABELS.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    return "\n".join(parts) + ("\nAnswer:" if add_generation_prompt else "")


def plain_answer_spans(messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """``render_plain(messages, add_generation_prompt=False)`` and the character span of each
    assistant answer in it: the answer and the space before it (tokenizers that fold a leading
    space into the next word report that token's offset from the space)."""
    text, spans = "", []
    for i, m in enumerate(messages):
        head = ("\n" if i else "") + f"{PLAIN_LABELS.get(m['role'], m['role'].title())}: "
        text += head
        if m["role"] == "assistant":
            spans.append((len(text) - 1, len(text) + len(m["content"])))
        text += m["content"]
    return text, spans


def cut_at_stop(text: str, stops: Sequence[str] = PLAIN_STOP_STRINGS) -> str:
    """``text`` up to the first stop string (all of it when none occurs)."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else text
