"""Pass 2 in worker processes: the same outputs as in-process, chunking and worker-count rules."""

from __future__ import annotations

import json
from pathlib import Path

from forgetless import artifacts
from forgetless.curate.config import CurateConfig
from forgetless.curate.pipeline import run_curate
from forgetless.curate.synthetic import planted_corpus
from forgetless.curate.workers import PARALLEL_MIN_BYTES, chunks, resolve_workers


def test_chunks_split_by_records_and_by_bytes() -> None:
    items = [(0, i + 1, b"x" * n, False) for i, n in enumerate([10, 10, 10, 10, 10])]
    assert [len(c) for c in chunks(items, max_records=2, max_bytes=1000)] == [2, 2, 1]
    # 25 bytes max: a chunk closes once it reaches 25 bytes (3 x 10), never splitting a record.
    assert [len(c) for c in chunks(items, max_records=100, max_bytes=25)] == [3, 2]
    assert [c[0][1] for c in chunks(items, max_records=2, max_bytes=1000)] == [1, 3, 5]  # order kept
    assert list(chunks([], max_records=2)) == []


def test_resolve_workers() -> None:
    assert resolve_workers(3, 10) == 3  # an explicit count wins
    assert resolve_workers(0, PARALLEL_MIN_BYTES - 1) == 1  # small input: in-process
    assert resolve_workers(0, PARALLEL_MIN_BYTES) >= 1


def test_two_workers_write_exactly_what_one_writes(tmp_path: Path) -> None:
    corpus = planted_corpus(300, n_exact=20, n_near=40, seed=3)
    path = corpus.write(tmp_path / "in.jsonl")
    with open(path, "ab") as f:  # rejects of every kind must come back in the right place too
        f.write(b'{"text": "caf\xe9"}\n{not json\n\n{"text": 5}\n{"text": "tiny"}\n')
    (tmp_path / "note.md").write_text("A whole Markdown file is one record, " * 5, encoding="utf-8")
    outs = {}
    for w in (1, 2):
        res = run_curate([path, tmp_path / "note.md"], tmp_path / f"out{w}", CurateConfig(workers=w))
        assert res.report["counts"]["add_up"]
        outs[w] = res
    one, two = outs[1], outs[2]
    for name in (artifacts.CURATED, artifacts.CURATE_REJECTS):
        assert (tmp_path / "out1" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes(), name
    assert (one.report["pass2_workers"], two.report["pass2_workers"]) == (1, 2)
    strip = lambda r: {k: v for k, v in r.items() if k not in ("timings_s", "pass2_workers")}  # noqa: E731
    assert json.dumps(strip(one.report), sort_keys=True) == json.dumps(strip(two.report), sort_keys=True)
    c = two.report["counts"]
    # Every planted copy is found: 20 exact, and at least 95% of the 40 near copies.
    assert c["rejected_by_reason"]["exact_duplicate"] >= 20
    assert c["rejected_by_reason"]["near_duplicate"] >= 38
    assert c["rejected_by_reason"]["unreadable"] == 2 and c["rejected_by_reason"]["invalid_record"] == 1
