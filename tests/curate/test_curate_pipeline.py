"""The curate stage end to end: formats, boilerplate, counts that add up, bad input as rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgetless import artifacts
from forgetless.curate.config import CurateConfig
from forgetless.curate.pipeline import run_curate
from forgetless.data import load_examples
from forgetless.errors import InputError

PHARMA = Path(__file__).resolve().parents[2] / "examples" / "data" / "pharma" / "docs.jsonl"
SENT = "The {} committee reviewed {} proposals about river {} and agreed on {} new measures today."


def _doc(i: int) -> str:
    return SENT.format(f"c{i}", f"n{i}", f"r{i * 7}", f"m{i * 3}")


def _jsonl(path: Path, recs: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs), encoding="utf-8")
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_formats_kept_and_loadable(tmp_path: Path) -> None:
    data = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"text": _doc(1), "id": "a"},
            {"messages": [{"role": "user", "content": "What did the committee do?"}, {"role": "assistant", "content": _doc(2)}]},
            {"prompt": "Summarise the meeting please.", "response": _doc(3)},
        ],
    )
    (tmp_path / "note.md").write_text("# Notes\n\n" + _doc(4), encoding="utf-8")
    res = run_curate([data, tmp_path / "note.md"], tmp_path / "out", CurateConfig())
    kept = _read(res.kept_path)
    assert [("text" in r, "messages" in r, "prompt" in r) for r in kept] == [
        (True, False, False), (False, True, False), (False, False, True), (True, False, False)
    ]
    assert kept[0]["id"] == "a" and kept[0]["curate_source"].endswith("mixed.jsonl:1")
    assert kept[3]["text"].startswith("# Notes")
    # The training loader accepts the curated file as is.
    assert len(load_examples([res.kept_path])) == 4
    assert sorted(p.name for p in res.kept_path.parent.iterdir()) == sorted(
        [artifacts.CURATED, artifacts.CURATE_REJECTS, artifacts.CURATE_REPORT_MD, artifacts.CURATE_REPORT_JSON]
    )  # no temporary files or signature folders left behind
    assert res.rejects_path.read_text() == ""


def test_boilerplate_removed_only_when_repeated_across_records(tmp_path: Path) -> None:
    header, footer = "ACME Portal - page generated automatically", "Copyright ACME. All rights reserved."
    recs = [{"text": f"{header}\n{_doc(i)}\n{footer}"} for i in range(6)]
    recs += [{"text": f"Unique header {i}\n{_doc(100 + i)}"} for i in range(3)]
    res = run_curate([_jsonl(tmp_path / "d.jsonl", recs)], tmp_path / "out", CurateConfig(boilerplate_min_docs=5))
    kept = _read(res.kept_path)
    assert len(kept) == 9
    assert all(header not in r["text"] and footer not in r["text"] for r in kept)
    assert kept[6]["text"].startswith("Unique header 0")  # a line in one record is content
    lines = {b["line"]: b["records"] for b in res.report["cleaning"]["boilerplate_lines"]}
    assert lines == {header.casefold(): 6, footer.casefold(): 6}
    # Below the threshold nothing is removed.
    res = run_curate([tmp_path / "d.jsonl"], tmp_path / "out2", CurateConfig(boilerplate_min_docs=7))
    assert header in _read(res.kept_path)[0]["text"]


def test_counts_add_up_with_every_reason(tmp_path: Path) -> None:
    recs: list[object] = [
        {"text": _doc(1)},
        {"text": _doc(1).upper()},  # exact duplicate (normalized)
        {"text": _doc(2)},
        {"text": _doc(2).replace("today", "yesterday")},  # near duplicate
        {"text": "see attached"},  # too_short
        {"text": "<div>&nbsp;</div> <br/>"},  # empty after cleaning
        {"text": "# $ % & * + = @ ~ | " * 3 + "one two three four five"},  # symbol_ratio
        {"text": "\n".join(["same line here"] * 5 + ["other line", "third one", "fourth"])},  # repeated_lines
        "{not json",  # unreadable
        {"text": 5},  # invalid_record
        [1, 2],  # invalid_record (not an object)
    ]
    path = _jsonl(tmp_path / "all.jsonl", recs)
    with open(path, "ab") as f:
        f.write(b'{"text": "caf\xe9 latte"}\n\n')  # not UTF-8, then a blank line
    res = run_curate([path], tmp_path / "out", CurateConfig(max_words=500))
    c = res.report["counts"]
    assert c["rejected_by_reason"] == {
        "unreadable": 2, "invalid_record": 2, "empty": 1, "too_short": 1, "too_long": 0, "symbol_ratio": 1,
        "repeated_lines": 1, "exact_duplicate": 1, "near_duplicate": 1,
    }
    assert (c["records_in"], c["kept"], c["rejected"]) == (12, 2, 10)
    assert res.report["blank_lines"] == 1
    rej = {r["source"].rsplit(":", 1)[1]: r for r in _read(res.rejects_path)}
    assert rej["2"]["duplicate_of"].endswith("all.jsonl:1") and rej["2"]["record"] == {"text": _doc(1).upper()}
    assert rej["4"]["reason"] == "near_duplicate" and rej["4"]["duplicate_of"].endswith("all.jsonl:3")
    assert rej["9"]["raw"] == "{not json" and "all.jsonl:9: not valid JSON" in rej["9"]["detail"]
    assert "all.jsonl:10: field 'text': must be a string" in rej["10"]["detail"]
    assert rej["12"]["reason"] == "unreadable" and "all.jsonl:12: not valid UTF-8" in rej["12"]["detail"]
    assert "raw_base64" in rej["12"]  # the bytes are kept, losslessly
    md = res.report_md_path.read_text()
    assert "12 records in = 2 kept + 10 rejected (adds up)" in md


def test_missing_input_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.jsonl: file not found"):
        run_curate([tmp_path / "nope.jsonl"], tmp_path / "out", CurateConfig())


def test_dominance_warning_and_flags(tmp_path: Path) -> None:
    recs = [{"text": f"Invoice {i} for customer K{i}x was paid on day {i % 28} by transfer from bank B{i}q."} for i in range(40)]
    recs += [{"text": _doc(i)} for i in range(5)]
    recs += [{"text": "Short but real: Zyxquartine helps."}]  # short and has a rare term
    res = run_curate([_jsonl(tmp_path / "t.jsonl", recs)], tmp_path / "out", CurateConfig(rare_term_max_docs=1, flag_short_ratio=0.4))
    assert any(w.startswith("DOMINATED BY ONE PATTERN") and "invoice 0 for" in w for w in res.report["warnings"])
    short = [r for r in _read(res.kept_path) if "short" in r.get("curate_flags", [])]
    assert [r["text"] for r in short] == ["Short but real: Zyxquartine helps."]
    assert short[0]["curate_rare_terms"] == ["Short", "Zyxquartine"]
    assert res.report["flags"]["short"] == 1


@pytest.mark.skipif(not PHARMA.exists(), reason="sample domain not generated")
def test_sample_domain_defaults(tmp_path: Path) -> None:
    """The planted noise in examples/data/pharma/docs.jsonl is caught and the 90 real docs are kept."""
    res = run_curate([PHARMA], tmp_path / "out", CurateConfig())
    c = res.report["counts"]
    assert c["records_in"] == 105 and c["kept"] == 90
    by = c["rejected_by_reason"]
    assert (by["exact_duplicate"], by["near_duplicate"], by["too_short"] + by["empty"]) == (6, 6, 3)
    text = res.kept_path.read_text(encoding="utf-8")
    assert "&nbsp;" not in text and "<div" not in text and "<br" not in text
    assert "Veltrane Formulary Online" not in text and "All rights reserved" not in text
    # All 30 drugs still have their 3 documents' worth of facts: every drug name appears.
    drugs = {json.loads(x)["drug"] for x in (PHARMA.parent / "heldout_qa.jsonl").read_text().splitlines()}
    assert all(d in text for d in drugs)


# --- property test: arbitrary garbage never crashes and is always accounted for ------------------

_line = st.one_of(
    st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.text(max_size=40).map(lambda s: s.replace("\n", " ").replace("\r", " ")),
    st.builds(lambda t: json.dumps({"text": t}), st.text(min_size=0, max_size=200)),
    st.builds(lambda t: json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": t}]}), st.text(max_size=80)),
    st.just('{"text": "unterminated'),
    st.just(json.dumps({"text": "huge " + "word " * 12_000})),  # 60 KB, over max_words below
    st.just(json.dumps({"text": "x" * 300_000})),  # 300 KB line, one word
)
_file = st.lists(_line, min_size=0, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=st.lists(_file, min_size=1, max_size=3))
def test_property_garbage_is_accounted_for(tmp_path_factory: pytest.TempPathFactory, files: list[list[object]]) -> None:
    root = tmp_path_factory.mktemp("prop")
    paths, n_records = [], 0
    for k, lines in enumerate(files):
        raw = b"".join((x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass")) + b"\n" for x in lines)
        p = root / f"in{k}.jsonl"
        p.write_bytes(raw)
        paths.append(p)
        n_records += sum(1 for ln in raw.split(b"\n") if ln.strip())
    res = run_curate(paths, root / "out", CurateConfig(max_words=10_000))
    c = res.report["counts"]
    assert c["records_in"] == n_records == c["kept"] + c["rejected"] == c["kept"] + sum(c["rejected_by_reason"].values())
    kept, rejects = _read(res.kept_path), _read(res.rejects_path)
    assert (len(kept), len(rejects)) == (c["kept"], c["rejected"])
    for r in rejects:
        if r["reason"] in ("unreadable", "invalid_record"):
            # The message names the file and line the record came from.
            assert r["detail"].startswith(r["source"] + ":"), r
            assert ("raw" in r) or ("raw_base64" in r)
        else:
            assert "record" in r
    for f in paths:
        if f.stat().st_size == 0 or not f.read_bytes().strip():
            assert str(f) in res.report["empty_files"]
