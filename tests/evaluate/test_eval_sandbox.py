"""The code sandbox: timeouts kill, writes outside the folder are refused, passing code passes."""

from __future__ import annotations

import os
import socket
import textwrap
import time
from pathlib import Path

import pytest

from forgetless.errors import ForgetlessError
from forgetless.evaluate import codesuite, sandbox
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


# --- hostile programs: each is run with the audit hook and without it (the kernel alone must hold) --------
GUARDS = [pytest.param(True, id="hook+kernel"), pytest.param(False, id="kernel-only")]


def _kernel_or_skip() -> None:
    if not run_python("pass\n").kernel_confined:
        pytest.skip("this kernel cannot confine the sandbox; programs are refused there (tested below)")


@pytest.mark.parametrize("guard", GUARDS)
def test_no_network_not_even_udp_sendmsg(guard: bool) -> None:
    _kernel_or_skip()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        for send in (f"s.sendmsg([b'leak'], [], 0, ('127.0.0.1', {port}))", f"s.sendto(b'leak', ('127.0.0.1', {port}))"):
            r = run_python(f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n{send}\n", python_guard=guard)
            assert not r.passed and "PermissionError" in r.reason, r.stderr
        with pytest.raises(TimeoutError):
            listener.recv(16)
    finally:
        listener.close()


@pytest.mark.parametrize("guard", GUARDS)
def test_no_new_processes_by_any_route(guard: bool, tmp_path: Path) -> None:
    _kernel_or_skip()
    marker = tmp_path / "ran"
    spawn = {
        "fork": "import os\nif os.fork() == 0:\n    os._exit(0)\n",
        "fork_exec": (
            "import _posixsubprocess, os, sys\n"
            f"_posixsubprocess.fork_exec([b'/usr/bin/touch', {str(marker).encode()!r}], [b'/usr/bin/touch'], True, (), None, None,"
            " -1, -1, -1, -1, -1, -1, *os.pipe(), False, False, -1, None, None, None, -1, None, False)\n"
        ),
        "posix_spawn": f"import os\nos.posix_spawn('/usr/bin/touch', ['touch', {str(marker)!r}], {{}})\n",
    }
    for name, prog in spawn.items():
        r = run_python(prog, python_guard=guard)
        assert not r.passed, name
        assert "PermissionError" in r.reason, (name, r.stderr)
    assert not marker.exists()


def test_process_limit_is_a_little_above_what_the_user_runs_now() -> None:
    uid = os.getuid()
    tasks = sum(len(os.listdir(f"/proc/{p}/task")) for p in os.listdir("/proc") if p.isdigit() and _owned(p, uid))
    r = run_python(f"import resource\nsoft, hard = resource.getrlimit(resource.RLIMIT_NPROC)\nassert soft == hard <= {tasks + 200}, soft\n")
    assert r.passed, r.stderr


def _owned(pid: str, uid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid and os.path.isdir(f"/proc/{pid}/task")
    except OSError:
        return False


@pytest.mark.parametrize("guard", GUARDS)
def test_no_view_of_the_parent_or_the_users_files(guard: bool, tmp_path: Path) -> None:
    _kernel_or_skip()
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    for prog in ("import os\nopen('/proc/%d/environ' % os.getppid(), 'rb').read()\n", f"open({str(secret)!r}).read()\n",
                 "import os\nos.kill(os.getppid(), 0)\n"):  # fmt: skip
        r = run_python(prog, python_guard=guard)
        assert not r.passed and "PermissionError" in r.reason, (prog, r.stderr)
    assert secret.read_text() == "s3cret"


def test_honest_programs_still_run_with_stdlib_and_threads() -> None:
    prog = textwrap.dedent(
        """
        import collections, datetime, decimal, fractions, heapq, json, math, random, re, statistics
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(4) as ex:
            assert list(ex.map(lambda x: x * x, range(8))) == [x * x for x in range(8)]
        assert json.loads(json.dumps({"a": [1, 2]})) == {"a": [1, 2]} and math.isclose(statistics.mean([1, 2, 3]), 2)
        assert re.fullmatch(r"a+", "aaa") and decimal.Decimal("0.1") + decimal.Decimal("0.2") == decimal.Decimal("0.3")
        import os, signal
        os.kill(os.getpid(), 0)  # signalling itself is fine
        print(random.Random(0).random(), datetime.date(2020, 1, 1), fractions.Fraction(1, 3), heapq.nsmallest(1, [3, 1]),
              collections.Counter("aab"))
        """
    )
    r = run_python(prog)
    assert r.passed, r.stderr


def test_wall_clock_kill_is_not_held_open_by_a_detached_child() -> None:
    # A program that tries to leave a child behind holding its output, then sleeps: the limit holds.
    prog = textwrap.dedent(
        """
        import os, time
        try:
            if os.fork() == 0:
                os.setsid()
                time.sleep(30)
                os._exit(0)
        except OSError:
            pass
        time.sleep(30)
        """
    )
    t0 = time.monotonic()
    r = run_python(prog, timeout_s=1.0, python_guard=False)
    assert r.timed_out and not r.passed
    assert time.monotonic() - t0 < 15


def test_a_kernel_that_cannot_confine_means_not_run_and_the_code_suite_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand in for a kernel without Landlock: the child reports it and refuses, as the real one does.
    fake = tmp_path / "child.py"
    fake.write_text("import sys\nprint('SANDBOX-CONFINED landlock=0 seccomp=1 nproc=0')\nsys.exit(3)\n")
    monkeypatch.setattr(sandbox, "CHILD", fake)
    r = run_python("assert True\n")
    assert not r.passed and r.not_run and r.unconfined == ("landlock",)
    assert r.reason.startswith("not run: this kernel cannot enforce landlock")
    task = codesuite.CodeTask(id="t", prompt="p", entry_point="f", tests="assert f() == 1")
    with pytest.raises(ForgetlessError, match="code suite not scored: this kernel cannot enforce landlock"):
        codesuite.run_tests([task], ["def f():\n    return 1\n"], workers=1)
