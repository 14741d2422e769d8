"""``forgetless curate`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from forgetless.cli import app


def test_cli_curates_and_reports(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    recs = [{"text": f"Bridge {i} over river R{i}x was inspected in spring and found safe for {i + 2} tonnes."} for i in range(5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in recs + recs[:1]) + "{broken\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("curate:\n  enabled: true\n  min_words: 3\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["curate", str(data), "-o", str(out), "--config", str(cfg), "--set", "curate.threshold=0.7"])
    assert res.exit_code == 0, res.output
    assert "7 records in, 5 kept, 2 rejected (unreadable 1, exact_duplicate 1)" in " ".join(res.output.split())
    rep = json.loads((out / "report.json").read_text())
    assert rep["dedup"]["threshold"] == 0.7
    assert len((out / "curated.jsonl").read_text().splitlines()) == 5


def test_cli_bad_config_key_is_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from forgetless.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "one two three four five six"}) + "\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("curate:\n  treshold: 0.5\n")
    monkeypatch.setattr("sys.argv", ["forgetless", "curate", str(data), "-o", str(tmp_path / "o"), "--config", str(cfg)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "curate.treshold: unknown key" in err and "Traceback" not in err
