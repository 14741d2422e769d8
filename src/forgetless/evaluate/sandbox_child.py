"""The sandbox's child process: confine itself, say how, then run the program and its tests.

Run as a script (``python -I -S sandbox_child.py ROOT CPU MEM FSIZE NPROC GUARD REQUIRE``) by
:func:`forgetless.evaluate.sandbox.run_python`, never imported by forgetless. Plain stdlib only
(ctypes for the syscalls), because it runs in a bare isolated interpreter.

Layers, outermost first:

* rlimits: CPU seconds, address space, file size, no core files, processes of this user;
* Landlock (kernel, Linux >= 5.13): the process and anything it could start may write only in
  ROOT and read only the Python installation, the system libraries and ROOT: no ``/proc/<pid>``
  of other processes (their environment), no home folder, no other temp files;
* seccomp (kernel): no sockets of any kind (so no network), no new processes (fork, vfork,
  clone without CLONE_THREAD, execve), no ptrace or reading another process's memory, no signals
  to other processes, no io_uring;
* a Python audit hook (GUARD=1) that refuses the same things one level up, with clearer errors.

The first stdout line is ``SANDBOX-CONFINED landlock=0|1 seccomp=0|1 nproc=0|1``, written before
any program code runs. With REQUIRE=1 and a kernel that cannot enforce Landlock or seccomp, the
program is not run at all (exit code 3).
"""

import ctypes
import os
import platform
import resource
import sys

ROOT = os.path.realpath(sys.argv[1])
CPU, MEM, FSIZE, NPROC_MARGIN = (int(x) for x in sys.argv[2:6])
PYTHON_GUARD = sys.argv[6] == "1"
REQUIRE = sys.argv[7] == "1"
NOT_CONFINED_EXIT = 3

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def read_roots():
    """Folders the program may read (and map libraries from): Python itself and the system libraries."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(os.__file__)}
    dirs |= {"/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib"}
    return sorted({os.path.realpath(d) for d in dirs if d and os.path.isdir(d)})


def landlock(root):
    """Writes only under `root`; reads only under `root` and :func:`read_roots`. False if unsupported."""
    try:
        nr_create, nr_add, nr_restrict = 444, 445, 446  # same numbers on x86_64 and arm64
        abi = libc.syscall(nr_create, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        if abi < 1:
            return False
        execute, write_file, read_file, read_dir = 1 << 0, 1 << 1, 1 << 2, 1 << 3
        # REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM
        dir_write = sum(1 << b for b in range(4, 13))
        file_extra = 0
        if abi >= 2:
            dir_write |= 1 << 13  # REFER
        if abi >= 3:
            file_extra = 1 << 14  # TRUNCATE
        handled = execute | write_file | read_file | read_dir | dir_write | file_extra

        class RulesetAttr(ctypes.Structure):
            _fields_ = [("handled_access_fs", ctypes.c_uint64)]

        class PathBeneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

        attr = RulesetAttr(handled)
        fd = libc.syscall(nr_create, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
        if fd < 0:
            return False
        rules = [(root, handled)] + [(d, execute | read_file | read_dir) for d in read_roots() if d != root]
        rules += [("/dev/null", read_file | write_file | file_extra), ("/dev/urandom", read_file), ("/dev/zero", read_file),
                  ("/etc/ld.so.cache", read_file), ("/etc/localtime", read_file)]  # fmt: skip
        for path, rights in rules:
            try:
                pfd = os.open(path, os.O_PATH)
            except OSError:
                continue  # an optional file this system does not have
            rule = PathBeneath(rights, pfd)
            ok = libc.syscall(nr_add, ctypes.c_int(fd), ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0)) == 0
            os.close(pfd)
            if not ok:
                return False
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False
        return libc.syscall(nr_restrict, ctypes.c_int(fd), ctypes.c_uint32(0)) == 0
    except Exception:
        return False


# Syscall numbers per architecture: (audit arch, denied with EPERM, clone, clone3, kill-like (pid in arg 0), x32 bit).
_ARCH = {
    "x86_64": (0xC000003E, {
        41: "socket", 53: "socketpair", 42: "connect", 49: "bind", 50: "listen", 43: "accept", 288: "accept4",
        44: "sendto", 46: "sendmsg", 307: "sendmmsg", 57: "fork", 58: "vfork", 59: "execve", 322: "execveat",
        101: "ptrace", 310: "process_vm_readv", 311: "process_vm_writev", 200: "tkill", 424: "pidfd_send_signal",
        434: "pidfd_open", 438: "pidfd_getfd", 425: "io_uring_setup",
    }, 56, 435, (62, 234), True),  # kill, tgkill
    "aarch64": (0xC00000B7, {
        198: "socket", 199: "socketpair", 203: "connect", 200: "bind", 201: "listen", 202: "accept", 242: "accept4",
        206: "sendto", 211: "sendmsg", 269: "sendmmsg", 221: "execve", 281: "execveat",
        117: "ptrace", 270: "process_vm_readv", 271: "process_vm_writev", 130: "tkill", 424: "pidfd_send_signal",
        434: "pidfd_open", 438: "pidfd_getfd", 425: "io_uring_setup",
    }, 220, 435, (129, 131), False),  # kill, tgkill
}  # fmt: skip
_ARCH["arm64"] = _ARCH["aarch64"]


def seccomp():
    """Install the syscall filter described in the module docstring; False if unsupported here."""
    spec = _ARCH.get(platform.machine())
    if spec is None:
        return False
    audit_arch, denied, nr_clone, nr_clone3, kill_like, x32 = spec
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JGE, JSET, BPF_RET|K
    allow, kill_process = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    clone_thread = 0x00010000
    prog = []  # (code, jt, jf, k) with jt/jf as label names or 0

    def op(code, k, jt=0, jf=0):
        prog.append((code, jt, jf, k))

    op(ld, 4)  # seccomp_data.arch
    op(jeq, audit_arch, 0, "KILL")  # another ABI (i386 int 0x80, ...) is not allowed at all
    op(ld, 0)  # seccomp_data.nr
    if x32:
        op(jge, 0x40000000, "EPERM", 0)
    for nr in sorted(denied):
        op(jeq, nr, "EPERM", 0)
    op(jeq, nr_clone3, "ENOSYS", 0)  # its flags live in memory the filter cannot read; libc falls back to clone
    op(jeq, nr_clone, "CLONE", 0)
    for nr in kill_like:
        op(jeq, nr, "SELF", 0)
    op(ret, allow)
    labels = {"CLONE": len(prog)}
    op(ld, 16)  # low 32 bits of args[0]: clone flags
    op(jset, clone_thread, "ALLOW", "EPERM")  # a thread of this process: yes; a new process: no
    labels["SELF"] = len(prog)
    op(ld, 16)  # kill/tgkill target pid
    op(jeq, os.getpid(), "ALLOW", "EPERM")
    for name, k in (("ALLOW", allow), ("EPERM", eperm), ("ENOSYS", enosys), ("KILL", kill_process)):
        labels[name] = len(prog)
        op(ret, k)

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]

    def rel(i, target):
        return 0 if target == 0 else labels[target] - (i + 1)

    arr = (SockFilter * len(prog))(*[SockFilter(c, rel(i, jt), rel(i, jf), k) for i, (c, jt, jf, k) in enumerate(prog)])
    fprog = SockFprog(len(prog), arr)
    try:
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False
        return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0
    except Exception:
        return False


def own_tasks():
    """Processes and threads this user runs now (RLIMIT_NPROC counts both)."""
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat("/proc/" + pid).st_uid == uid:
                    n += len(os.listdir("/proc/%s/task" % pid))
            except OSError:
                pass
    return n


resource.setrlimit(resource.RLIMIT_CPU, (CPU, CPU))
if MEM > 0:
    resource.setrlimit(resource.RLIMIT_AS, (MEM, MEM))
resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE, FSIZE))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
# A process limit a little above what this user runs now: a fork bomb stops there. The kernel does
# not apply it to root (CAP_SYS_RESOURCE), which the report says; seccomp forbids forking anyway.
nproc_cap = own_tasks() + NPROC_MARGIN
resource.setrlimit(resource.RLIMIT_NPROC, (nproc_cap, nproc_cap))
nproc_enforced = os.geteuid() != 0
kernel_fs = landlock(ROOT)
kernel_sys = seccomp()
os.chdir(ROOT)
print("SANDBOX-CONFINED landlock=%d seccomp=%d nproc=%d" % (kernel_fs, kernel_sys, nproc_enforced), flush=True)
if REQUIRE and not (kernel_fs and kernel_sys):
    sys.exit(NOT_CONFINED_EXIT)

MY_PID = os.getpid()


def inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "/proc/self/fd/%d" % path)
    except Exception:
        return False
    return p == ROOT or p.startswith(ROOT + os.sep) or p == "/dev/null"


def other_process(path):
    """Whether `path` is under /proc/<pid> of another process (its environment, memory, ...)."""
    try:
        p = os.path.realpath(os.fsdecode(path))
    except Exception:
        return False
    parts = p.split(os.sep)
    return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and int(parts[2]) != MY_PID


FORBIDDEN_MODULES = {"_posixsubprocess", "_socket", "_multiprocessing", "_posixshmem"}
for _m in FORBIDDEN_MODULES:
    sys.modules.pop(_m, None)  # so that importing them again goes through the "import" audit event


def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (mode and any(c in str(mode) for c in "wax+")) or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        if writing and path is not None and not inside(path):
            raise PermissionError("sandbox: writing outside the sandbox folder is not allowed: %r" % (path,))
        if path is not None and not isinstance(path, int) and other_process(path):
            raise PermissionError("sandbox: reading another process's /proc entry is not allowed: %r" % (path,))
    elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime", "os.link", "os.symlink", "shutil.rmtree", "shutil.copyfile", "shutil.move"):
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        if not paths or not all(inside(p) for p in paths[:2 if event in ("os.link", "os.symlink", "shutil.copyfile", "shutil.move") else 1]):
            raise PermissionError("sandbox: %s outside the sandbox folder is not allowed" % event)
    elif event == "os.rename":
        if not (inside(args[0]) and inside(args[1])):
            raise PermissionError("sandbox: os.rename outside the sandbox folder is not allowed")
    elif event == "import" and args[0] in FORBIDDEN_MODULES:
        raise PermissionError("sandbox: importing %s is not allowed" % args[0])
    elif event.startswith("socket."):
        raise PermissionError("sandbox: %s is not allowed (no network)" % event)
    elif event in ("os.kill", "os.killpg", "signal.pthread_kill") and not (event == "os.kill" and args[0] == MY_PID):
        raise PermissionError("sandbox: %s of another process is not allowed" % event)
    elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata"):
        raise PermissionError("sandbox: %s is not allowed" % event)


if PYTHON_GUARD:
    sys.addaudithook(hook)
del hook
with open("solution_and_tests.py", encoding="utf-8") as f:
    code = compile(f.read(), "solution_and_tests.py", "exec")
exec(code, {"__name__": "__main__"})
print("SANDBOX-OK", flush=True)
