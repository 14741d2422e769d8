"""Cleaning and quality filters, with hand-worked expected values."""

from __future__ import annotations

import numpy as np

from forgetless.curate.clean import (
    CountMinSketch,
    clean_record,
    normalize_text,
    quality_reject,
    record_lines,
    str_hashes,
    terms,
    words,
)
from forgetless.curate.config import CurateConfig


def test_normalize_nfc_controls_and_spaces() -> None:
    # "e" + combining acute becomes one code point; NUL, zero-width space and BOM vanish;
    # tabs/NBSP collapse to one space; CRLF becomes LF; 3+ blank lines become one blank line.
    raw = "\ufeffCafe\u0301\x00 \t\u00a0bar\u200b\r\n\r\n\r\n\r\nnext  line  "
    assert normalize_text(raw) == "Caf\u00e9 bar\n\nnext line"


def test_html_remnants_removed_but_code_fences_kept() -> None:
    raw = '<div class="entry">Dose:&nbsp;5 mg<br/>daily</div><script>var x=1;</script> &amp; more'
    # <div> and <br/> become line breaks, the script block disappears, entities are decoded.
    assert normalize_text(raw) == "Dose: 5 mg\ndaily\n& more"
    code = "Use this:\n```html\n<div>&nbsp;</div>\n```\n<b>done</b>"
    assert normalize_text(code) == "Use this:\n```html\n<div>&nbsp;</div>\n```\ndone"
    assert normalize_text("<b>x</b>", html_tags=False) == "<b>x</b>"


def test_words_and_terms() -> None:
    assert words("Hello, World! x2 it's") == ["hello", "world", "x2", "it", "s"]
    # Capitalised words of 4+ letters and letter+digit codes; short or lower-case words are not terms.
    assert terms("Zorvanex 5 mg, AB12 and the Cat; quelbitrine") == {"Zorvanex", "AB12"}


def test_clean_record_formats_and_boilerplate() -> None:
    cfg = CurateConfig()
    boiler = frozenset({"page generated automatically"})
    rec = {"text": "Page  generated automatically\nReal <i>content</i> here.", "id": 7}
    assert clean_record(rec, cfg, boiler) == {"text": "Real content here.", "id": 7}
    assert rec["text"].startswith("Page  generated")  # the input record is not modified
    chat = {"messages": [{"role": "user", "content": " Hi\u200b "}, {"role": "assistant", "content": "<p>Yes</p>"}]}
    assert clean_record(chat, cfg)["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}]
    pr = {"prompt": "a\tb", "response": "c  d"}
    assert clean_record(pr, cfg) == {"prompt": "a b", "response": "c d"}
    assert record_lines({"text": "One\n\n  TWO  three "}, cfg) == ["one", "two three"]
    # One-line texts are never boilerplate candidates (a repeated system prompt is content).
    assert record_lines({"text": "only one line"}, cfg) == []
    sys_prompt = {"messages": [{"role": "system", "content": "page generated automatically"}, {"role": "assistant", "content": "ok"}]}
    assert clean_record(sys_prompt, cfg, boiler)["messages"][0]["content"] == "page generated automatically"


def test_quality_reasons_hand_worked() -> None:
    cfg = CurateConfig(min_words=3, max_words=6, max_symbol_ratio=0.5, max_repeated_line_ratio=0.3)
    assert quality_reject("  ", 0, cfg) == ("empty", "no text left after cleaning")
    assert quality_reject("see attached", 2, cfg)[0] == "too_short"
    assert quality_reject("a b c d e f g", 7, cfg)[0] == "too_long"
    # 2 symbols ("#", "$") over 3 words = 0.67 > 0.5; inside a code fence they do not count.
    assert quality_reject("one # two $ three", 3, cfg) == ("symbol_ratio", "2 symbols / 3 words > 0.5")
    assert quality_reject("one two three\n```\n# $ # $\n```", 3, cfg) is None
    # 5 lines, 2 of them repeats: 0.4 > 0.3.
    text = "alpha\nbeta\nalpha\ngamma\nbeta"
    assert quality_reject(text, 5, cfg) == ("repeated_lines", "2 of 5 lines repeat > 0.3")
    off = CurateConfig(min_words=0, max_words=0, max_symbol_ratio=None, max_repeated_line_ratio=None)
    assert quality_reject("#", 0, off) is None


def test_count_min_sketch_counts_and_never_undercounts() -> None:
    cms = CountMinSketch(width=1 << 16)
    a, b = str_hashes(["alpha"]), str_hashes(["beta"])
    for _ in range(5):
        cms.add(a)
    cms.add(np.concatenate([b, b]))  # every occurrence counts (callers deduplicate per document)
    assert cms.query(a).tolist() == [5]
    assert cms.query(b).tolist() == [2]
    assert cms.query(str_hashes(["never seen"])).tolist() == [0]
    # A tiny sketch must over-count under collisions, never under-count.
    small = CountMinSketch(width=16, depth=2)
    keys = str_hashes([f"k{i}" for i in range(200)])
    for k in keys:
        small.add(np.array([k]))
    assert (small.query(keys) >= 1).all()
