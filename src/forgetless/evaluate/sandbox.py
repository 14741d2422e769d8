"""Run model-written Python against unit tests in a separate, confined process.

Code a model writes can loop forever, fill the disk or delete files. Each program runs in a fresh
``python -I`` subprocess, in its own temporary folder, with:

* a wall-clock timeout; on expiry the whole process group is killed (SIGKILL), so children die too;
* resource limits: CPU seconds, address space (memory), size of any file written, open files;
* no write access outside its temporary folder. Where the kernel has Landlock (Linux >= 5.13,
  unprivileged), writes are denied by the kernel itself, for the process and all its children.
  On top of that (and as the only guard elsewhere) a Python audit hook refuses opening files for
  writing, deleting, renaming, ``chmod`` and creating folders outside the folder, and starting
  processes, ``ctypes`` and sockets. An audit hook stops honest mistakes, not a determined
  attacker; Landlock is what makes the write ban hold against code that tries to escape it.

This is a guard for running *model output on your own machine*, not a security boundary for
hostile code: use containers or VMs for that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

# The child process's bootstrap: confine itself, then run the candidate program and its tests.
# It is plain stdlib Python (ctypes for the Landlock syscalls) so it runs in a bare `python -I`.
_BOOTSTRAP = textwrap.dedent(
    r'''
    import ctypes, os, resource, sys

    ROOT = os.path.realpath(sys.argv[1])
    LIMITS = [int(x) for x in sys.argv[2:5]]  # cpu seconds, address space bytes, file size bytes
    PYTHON_GUARD = sys.argv[5] == "1"

    def landlock(root):
        """Deny every filesystem write outside `root` at kernel level; False if unsupported."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            syscall = libc.syscall
            syscall.restype = ctypes.c_long
            NR_CREATE, NR_ADD, NR_RESTRICT = 444, 445, 446  # same numbers on x86_64 and arm64
            abi = syscall(NR_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
            if abi < 1:
                return False
            # ABI 1 write-type rights: WRITE_FILE, REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR,
            # MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM; ABI 2 adds REFER, ABI 3 TRUNCATE.
            write = (1 << 1) | sum(1 << b for b in range(4, 13))
            if abi >= 2:
                write |= 1 << 13
            if abi >= 3:
                write |= 1 << 14

            class RulesetAttr(ctypes.Structure):
                _fields_ = [("handled_access_fs", ctypes.c_uint64)]

            class PathBeneath(ctypes.Structure):
                _pack_ = 1
                _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

            attr = RulesetAttr(write)
            fd = syscall(NR_CREATE, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
            if fd < 0:
                return False
            for allowed in (root, "/dev/null"):
                pfd = os.open(allowed, os.O_PATH)
                rights = write if os.path.isdir(allowed) else (1 << 1)
                rule = PathBeneath(rights, pfd)
                if syscall(NR_ADD, ctypes.c_int(fd), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    return False
                os.close(pfd)
            PR_SET_NO_NEW_PRIVS = 38
            if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                return False
            return syscall(NR_RESTRICT, ctypes.c_int(fd), ctypes.c_uint32(0)) == 0
        except Exception:
            return False

    cpu, mem, fsize = LIMITS
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    if mem > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    kernel = landlock(ROOT)
    os.chdir(ROOT)

    def inside(path):
        try:
            p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "/proc/self/fd/%d" % path)
        except Exception:
            return False
        return p == ROOT or p.startswith(ROOT + os.sep) or p == "/dev/null"

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (mode and any(c in str(mode) for c in "wax+")) or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if writing and path is not None and not inside(path):
                raise PermissionError("sandbox: writing outside the sandbox folder is not allowed: %r" % (path,))
        elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime", "os.link", "os.symlink", "shutil.rmtree", "shutil.copyfile", "shutil.move"):
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
            if not paths or not all(inside(p) for p in paths[:2 if event in ("os.link", "os.symlink", "shutil.copyfile", "shutil.move") else 1]):
                raise PermissionError("sandbox: %s outside the sandbox folder is not allowed" % event)
        elif event in ("os.rename",):
            if not (inside(args[0]) and inside(args[1])):
                raise PermissionError("sandbox: os.rename outside the sandbox folder is not allowed")
        elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "socket.connect", "socket.bind", "socket.sendto"):
            raise PermissionError("sandbox: %s is not allowed" % event)

    if PYTHON_GUARD:
        sys.addaudithook(hook)
    del hook
    src = open("solution_and_tests.py").read()
    code = compile(src, "solution_and_tests.py", "exec")
    exec(code, {"__name__": "__main__"})
    print("SANDBOX-OK kernel=%d" % kernel)
    '''
)


@dataclass(frozen=True)
class RunResult:
    """Outcome of one sandboxed program: ``passed`` only if it exited 0 after all its asserts."""

    passed: bool
    timed_out: bool
    returncode: int | None
    stdout: str
    stderr: str
    kernel_confined: bool

    @property
    def reason(self) -> str:
        """One line saying why it failed ('' when it passed)."""
        if self.passed:
            return ""
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
) -> RunResult:
    """Run ``program`` (a solution followed by its asserts) in a confined subprocess.

    ``workdir``: where the temporary sandbox folder is created (default: the system temp dir).
    ``python_guard=False`` leaves out the audit hook, to test the kernel (Landlock) confinement alone.
    """
    with tempfile.TemporaryDirectory(prefix="forgetless-sandbox-", dir=workdir) as root:
        Path(root, "solution_and_tests.py").write_text(program, encoding="utf-8")
        Path(root, "bootstrap.py").write_text(_BOOTSTRAP, encoding="utf-8")
        cpu = max(1, int(timeout_s) + 1)
        cmd = [sys.executable, "-I", "-S", "bootstrap.py", root, str(cpu), str(memory_mb << 20), str(max_file_mb << 20), "1" if python_guard else "0"]
        # A minimal environment: nothing of the parent's (tokens, proxies) leaks into model code.
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": root, "TMPDIR": root}
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            # Kill the whole session (the program may have forked before the hook saw it).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            timed_out = True
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        ok_line = next((ln for ln in stdout.splitlines() if ln.startswith("SANDBOX-OK")), "")
        passed = not timed_out and proc.returncode == 0 and bool(ok_line)
        return RunResult(passed, timed_out, proc.returncode, stdout, stderr, ok_line.endswith("kernel=1"))
