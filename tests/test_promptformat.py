"""The plain frame used for models without a chat template, against hand-worked strings."""

from __future__ import annotations

from forgetless.promptformat import CHAT_TEMPLATE, PLAIN, cut_at_stop, plain_answer_spans, prompt_format, render_plain
from forgetless.testing import tiny_tokenizer


def test_render_plain_and_answer_spans() -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert render_plain(msgs[:2]) == "System: be brief\nQuestion: 2+2?\nAnswer:"
    text, spans = plain_answer_spans(msgs)
    assert text == "System: be brief\nQuestion: 2+2?\nAnswer: 4" == render_plain(msgs, add_generation_prompt=False)
    # The span covers the answer and the space before it.
    assert spans == [(len(text) - 2, len(text))] and text[spans[0][0] : spans[0][1]] == " 4"


def test_prompt_format_follows_the_tokenizer() -> None:
    assert prompt_format(tiny_tokenizer()) == CHAT_TEMPLATE
    assert prompt_format(tiny_tokenizer(plain=True)) == PLAIN


def test_cut_at_stop() -> None:
    assert cut_at_stop(" Paris\nQuestion: and Spain?") == " Paris"
    assert cut_at_stop(" Paris.\n\nThe city") == " Paris."
    assert cut_at_stop(" Paris, France") == " Paris, France"
