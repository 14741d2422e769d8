"""The code sandbox: timeouts kill, writes outside the folder are refused, passing code passes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from forgetless.evaluate.sandbox import run_python


def test_passing_and_failing_programs() -> None:
    ok = run_python("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n")
    assert ok.passed and not ok.timed_out and ok.reason == ""
    bad = run_python("def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n")
    assert not bad.passed and "AssertionError" in bad.reason
    syntax = run_python("def add(a, b) return a\n")
    assert not syntax.passed and "SyntaxError" in syntax.reason


def test_infinite_loop_is_killed() -> None:
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert r.timed_out and not r.passed and r.reason == "timed out"
    assert time.monotonic() - t0 < 5


def test_write_outside_folder_is_blocked(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('x')\n")
    assert not r.passed and "PermissionError" in r.reason
    assert not target.exists()
    # Deleting and low-level opens are refused too; the file survives.
    keep = tmp_path / "keep.txt"
    keep.write_text("data")
    r = run_python(f"import os\nos.remove({str(keep)!r})\n")
    assert not r.passed and keep.read_text() == "data"
    r = run_python(f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n")
    assert not r.passed and not target.exists()
    r = run_python(f"import subprocess\nsubprocess.run(['touch', {str(target)!r}])\n")
    assert not r.passed and not target.exists()


def test_writing_inside_its_own_folder_is_allowed() -> None:
    r = run_python("open('scratch.txt', 'w').write('hi')\nassert open('scratch.txt').read() == 'hi'\n")
    assert r.passed, r.stderr


def test_kernel_confinement_alone_blocks_the_write(tmp_path: Path) -> None:
    # Without the Python audit hook, only Landlock stands between the program and the disk.
    probe = run_python("pass\n")
    if not probe.kernel_confined:
        pytest.skip("this kernel has no Landlock; only the audit-hook guard applies here")
    target = tmp_path / "escaped.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('x')\n", python_guard=False)
    assert not r.passed and "Permission denied" in r.reason and not target.exists()
