"""Bad input through the real CLI: one clear line naming file and line, no traceback, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forgetless.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return int(e.value.code or 0), out.err + out.out


CASES = {
    "broken_json": (b'{"text": "ok"}\n{"text": "missing brace"\n', ":2: not valid JSON"),
    "missing_field": (b'{"text": "ok"}\n{"prompt": "q"}\n', ":2: field 'response': is missing"),
    "wrong_type": (b'{"text": 3}\n', ":1: field 'text': must be a string"),
    "empty_file": (b"", "file is empty"),
    "non_utf8": (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', ":2: not valid UTF-8"),
    "deeply_nested": (b'{"text": "ok"}\n' + b"[" * 100_000 + b"\n", ":2: not valid JSON: nested too deeply"),
    "no_known_field": (b'{"body": "x"}\n', ":1: record needs 'text', 'messages' or 'prompt'/'response'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_training_file(case: str, tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    content, expected = CASES[case]
    bad = tiny_run / "bad.jsonl"
    bad.write_bytes(content)
    code, err = _run(["run", str(tiny_run / "cfg.yaml"), f"data.train=[{bad}]"], capsys)
    assert code == 2
    assert str(bad) in err and expected in err.replace("\n", "")
    assert "Traceback" not in err


def test_bad_config_lists_key_path(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["validate", str(tiny_run / "cfg.yaml"), "train.lrr=1"], capsys)
    assert code == 2 and "train.lrr: unknown key" in err and "Traceback" not in err


def test_validate_prints_resolved_config(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["validate", str(tiny_run / "cfg.yaml"), "train.lr=0.5"], capsys)
    assert code == 0 and "lr: 0.5" in out and str(tiny_run / "train.jsonl") in out


def test_missing_file_subprocess(tmp_path: Path) -> None:
    """The installed console script itself: exit code 2 and no traceback."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  train: [{tmp_path / 'nope.jsonl'}]\n")
    exe = Path(sys.executable).with_name("forgetless")
    p = subprocess.run([str(exe), "run", str(cfg)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "nope.jsonl: file not found" in p.stderr and "Traceback" not in p.stderr
