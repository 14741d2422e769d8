"""io: JSONL and text reading (BOM, nesting depth) with file/line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgetless.curate.reader import iter_records
from forgetless.data import load_file
from forgetless.errors import InputError
from forgetless.io import iter_jsonl, read_text_file

BOM = b"\xef\xbb\xbf"


def test_a_utf8_bom_is_accepted_everywhere(tmp_path: Path) -> None:
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(BOM + b'{"text": "hello"}\n{"text": "world"}\n')
    assert list(iter_jsonl(jsonl)) == [(1, {"text": "hello"}), (2, {"text": "world"})]
    assert [e.text for e in load_file(jsonl)] == ["hello", "world"]
    txt = tmp_path / "bom.md"
    txt.write_bytes(BOM + b"# notes\n")
    assert read_text_file(txt) == "# notes\n"
    # curate keeps both records and the text file's content without the mark
    recs = list(iter_records([jsonl, txt]))
    assert [r.rec for r in recs] == [{"text": "hello"}, {"text": "world"}, {"text": "# notes\n"}]


def test_only_a_leading_bom_is_dropped(tmp_path: Path) -> None:
    # A BOM in the middle of a file is content (line 2 is not JSON): still an error naming the line.
    jsonl = tmp_path / "mid.jsonl"
    jsonl.write_bytes(b'{"text": "a"}\n' + BOM + b'{"text": "b"}\n')
    with pytest.raises(InputError, match=r"mid.jsonl:2"):
        list(iter_jsonl(jsonl))


def test_deep_nesting_is_an_input_error_naming_the_line(tmp_path: Path) -> None:
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_bytes(b'{"text": "a"}\n' + b"[" * 100_000 + b"\n")
    with pytest.raises(InputError, match=r"deep.jsonl:2: not valid JSON: nested too deeply"):
        list(iter_jsonl(jsonl))
