"""Run model-written Python against unit tests in a separate, confined process.

Code a model writes can loop forever, fork, open sockets, fill the disk or read secrets. Each
program runs in a fresh ``python -I -S`` subprocess (:mod:`forgetless.evaluate.sandbox_child`),
in its own temporary folder, with a minimal environment and:

* a hard wall-clock limit: on expiry the whole process group is killed (SIGKILL). Output goes to
  files, not pipes, so nothing the program leaves behind can hold the evaluation open;
* resource limits: CPU seconds, address space, size of any file written, number of processes;
* kernel confinement, for the process and anything it could start: Landlock (writes only in its
  folder; reads only Python, the system libraries and its folder: no ``/proc/<pid>/environ`` of
  the evaluator, no home folder) and seccomp (no sockets, so no network; no fork/exec; no
  ptrace; no signals to other processes);
* a Python audit hook refusing the same things with clearer messages (an audit hook stops honest
  mistakes, not a determined attacker: the kernel layers are what hold).

Where the kernel cannot enforce Landlock or seccomp (not Linux, a kernel before 5.13, an
unknown CPU architecture), the program is **not run**: its result says which protection is
missing (``unconfined``), and the code suite refuses to score instead of running unconfined.
This is a guard for running *model output on your own machine*; for hostile code the real
boundary is a container or VM (run forgetless inside one, then opt in with
``FORGETLESS_SANDBOX_UNCONFINED=1`` if that container's kernel lacks Landlock).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")
# Set to 1 only where something outside (a container, a VM) already confines the evaluation.
UNCONFINED_ENV = "FORGETLESS_SANDBOX_UNCONFINED"
_NOT_CONFINED_EXIT = 3  # sandbox_child's exit code when it refused to run unconfined
_NPROC_MARGIN = 64  # processes/threads above what the user runs now (RLIMIT_NPROC counts threads)
_MAX_OUTPUT = 1 << 20  # bytes of stdout/stderr kept per program


@dataclass(frozen=True)
class RunResult:
    """Outcome of one sandboxed program: ``passed`` only if it exited 0 after all its asserts."""

    passed: bool
    timed_out: bool
    returncode: int | None
    stdout: str
    stderr: str
    kernel_confined: bool  # Landlock and seccomp both held the program
    unconfined: tuple[str, ...] = ()  # protections the kernel could not enforce here

    @property
    def not_run(self) -> bool:
        """True when the program was refused because the kernel could not confine it."""
        return bool(self.unconfined) and self.returncode == _NOT_CONFINED_EXIT

    @property
    def reason(self) -> str:
        """One line saying why it failed ('' when it passed)."""
        if self.passed:
            return ""
        if self.not_run:
            return f"not run: this kernel cannot enforce {', '.join(self.unconfined)} (run inside a container; see {UNCONFINED_ENV})"
        if self.timed_out:
            return "timed out"
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else f"exit code {self.returncode}"


def run_python(
    program: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_file_mb: int = 8,
    workdir: str | Path | None = None,
    python_guard: bool = True,
    require_confinement: bool | None = None,
) -> RunResult:
    """Run ``program`` (a solution followed by its asserts) in a confined subprocess.

    ``workdir``: where the temporary sandbox folder is created (default: the system temp dir).
    ``python_guard=False`` leaves out the audit hook, to test the kernel confinement alone.
    ``require_confinement``: refuse to run where the kernel cannot confine the program (default:
    yes, unless ``$FORGETLESS_SANDBOX_UNCONFINED`` is 1).
    """
    if require_confinement is None:
        require_confinement = os.environ.get(UNCONFINED_ENV) != "1"
    with tempfile.TemporaryDirectory(prefix="forgetless-sandbox-", dir=workdir) as outer:
        root = Path(outer, "box")
        root.mkdir()
        Path(root, "solution_and_tests.py").write_text(program, encoding="utf-8")
        child = Path(outer, "child.py")  # outside the program's folder: it cannot rewrite its own guard
        child.write_text(CHILD.read_text(encoding="utf-8"), encoding="utf-8")
        cpu = max(1, int(timeout_s) + 1)
        cmd = [sys.executable, "-I", "-S", str(child), str(root), str(cpu), str(memory_mb << 20), str(max_file_mb << 20),
               str(_NPROC_MARGIN), "1" if python_guard else "0", "1" if require_confinement else "0"]  # fmt: skip
        # A minimal environment: nothing of the parent's (tokens, proxies) is handed to model code;
        # Landlock keeps it from reading the parent's through /proc.
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(root), "TMPDIR": str(root)}
        out_path, err_path = Path(outer, "stdout"), Path(outer, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True)  # fmt: skip
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Kill the whole session, also after a normal exit (anything it left running dies with it).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()  # the direct child is dead by now: this returns at once
        stdout, stderr = _read_capped(out_path), _read_capped(err_path)
        lines = stdout.splitlines()
        confined = _confinement(lines[0] if lines else "")
        unconfined = tuple(k for k in ("landlock", "seccomp") if not confined.get(k))
        ok = bool(lines) and lines[-1] == "SANDBOX-OK"
        passed = not timed_out and proc.returncode == 0 and ok and (not unconfined or not require_confinement)
        return RunResult(passed, timed_out, proc.returncode, stdout, stderr, not unconfined, unconfined)


def _confinement(line: str) -> dict[str, bool]:
    # The child writes "SANDBOX-CONFINED landlock=1 seccomp=1 nproc=0" before any program code runs,
    # so the first line is its own, whatever the program prints later.
    if not line.startswith("SANDBOX-CONFINED "):
        return {}
    return {k: v == "1" for k, _, v in (part.partition("=") for part in line.split()[1:])}


def _read_capped(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(_MAX_OUTPUT).decode("utf-8", "replace")
