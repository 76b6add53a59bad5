"""Run untrusted, model-written Python in a contained subprocess.

The code verifiers (unit tests for the code domain, HumanEval/MBPP-style evaluation) execute what a
model wrote, so a careless `shutil.rmtree`, an endless loop or a memory hog must not harm the caller.
Containment comes in three layers:

1. Always: `python -I -B -u` in its own session (killed as a group on timeout), a fresh temporary
   working directory removed afterwards, an environment holding only PATH, LANG and HOME/TMPDIR
   pointing at that directory, and rlimits: CPU time, address space, file size, no core files, and
   RLIMIT_NPROC. The kernel exempts root from RLIMIT_NPROC, so as root it is not set.
2. When the caller may create namespaces (root on Linux, probed once): a private network namespace
   (no interface is up, not even loopback), a private mount namespace in which every mount is
   read-only except the working directory and /dev/null, and an empty capability bounding set so
   the code cannot remount or leave those namespaces. This is the real guarantee for files and
   network.
3. Always: an audit-hook prelude (`sys.addaudithook`, which the code cannot remove) that refuses
   writes, deletes and renames outside the working directory, non-Unix socket connects/binds/DNS,
   process creation, signals to other processes and ctypes. It stops accidents, not a determined
   adversary (e.g. `_posixsubprocess.fork_exec` called directly raises no audit event): without
   layer 2 the file and network limits are best effort.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OUTPUT_LIMIT_BYTES = 64 * 1024
FILE_SIZE_LIMIT_BYTES = 16 * 1024 * 1024
# RLIMIT_NPROC counts every task of the uid, so the limit is the current count plus this headroom.
EXTRA_PROCESSES = 32

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

    Never raises because of the code (syntax errors, exceptions, timeouts and kills are results);
    raises ValueError for non-positive limits. stdout and stderr are cut to OUTPUT_LIMIT_BYTES each.
    Each call costs one interpreter start (~20-50 ms). Callable from several threads: between fork
    and exec the child imports nothing and only makes system calls (rlimits, namespaces).
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout_s and memory_mb must be positive, got {timeout_s} and {memory_mb}")
    workdir = Path(tempfile.mkdtemp(prefix="skillweave-sandbox-")).resolve()
    try:
        (workdir / "solution.py").write_text(code, encoding="utf-8")
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-u", "-c", _PRELUDE],
                cwd=workdir,
                env=_scrubbed_env(workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=functools.partial(
                    _confine_child, os.fsencode(workdir), _limits(timeout_s, memory_mb), _namespaces()
                ),
            )
            timed_out = not _wait_unreaped(proc.pid, timeout_s)
            # The leader is not reaped yet (still running, or a zombie), so its group id cannot have
            # been reused: killing the group is safe and ends leftover children too.
            _kill_group(proc.pid)
            returncode = proc.wait()
            stdout, stderr = _read_truncated(out), _read_truncated(err)
    finally:
        _remove_tree(workdir)
    ok = returncode == 0 and not timed_out
    if timed_out:
        reason = f"timeout after {timeout_s}s"
    elif ok:
        reason = "ok"
    else:
        reason = _failure_reason(returncode, stderr, code)
    return SandboxResult(ok, returncode, timed_out, stdout, stderr, reason)


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
    if os.geteuid() != 0:
        wanted.append((resource.RLIMIT_NPROC, (_user_tasks() + EXTRA_PROCESSES,) * 2))
    limits = []
    for res, (soft, hard) in wanted:
        current_hard = resource.getrlimit(res)[1]
        if current_hard != resource.RLIM_INFINITY:  # an unprivileged process cannot raise it
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        limits.append((res, (soft, hard)))
    return limits


def _user_tasks() -> int:
    uid, tasks = os.getuid(), 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:  # the process ended while we looked
            continue
        if int(fields["Uid"].split()[0]) == uid:
            tasks += int(fields["Threads"])
    return tasks


class _MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]


_CLONE_NEWNS, _CLONE_NEWNET = 0x00020000, 0x40000000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_MOUNT_ATTR_RDONLY, _AT_FDCWD, _AT_RECURSIVE = 0x1, -100, 0x8000
_SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 alike (new syscalls share numbers)
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 24, 38


@functools.cache
def _namespaces() -> tuple[ctypes.CDLL, int] | None:
    """libc and the last capability number if namespace confinement works here, else None."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.syscall.restype = ctypes.c_long
    cap_last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    probe_dir = tempfile.mkdtemp(prefix="skillweave-sandbox-probe-")
    try:
        setup = functools.partial(_enter_namespaces, os.fsencode(probe_dir), (libc, cap_last))
        result = subprocess.run([sys.executable, "-I", "-c", "pass"], cwd=probe_dir, preexec_fn=setup,
                                capture_output=True)
        return (libc, cap_last) if result.returncode == 0 else None
    except subprocess.SubprocessError:  # the setup failed in the child (e.g. mount denied)
        return None
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)


def _confine_child(workdir: bytes, limits: list, namespaces: tuple[ctypes.CDLL, int] | None) -> None:
    """preexec_fn: runs in the forked child before exec."""
    if namespaces is not None:
        _enter_namespaces(workdir, namespaces)
    for res, values in limits:
        resource.setrlimit(res, values)


def _enter_namespaces(workdir: bytes, namespaces: tuple[ctypes.CDLL, int]) -> None:
    libc, cap_last = namespaces

    def check(ret: int, what: str) -> None:
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox {what}: {os.strerror(err)}")

    def set_attr(path: bytes, flags: int, attr: _MountAttr) -> None:
        ret = libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path, flags, ctypes.byref(attr), ctypes.sizeof(attr))
        check(ret, f"mount_setattr {path!r}")

    check(libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET), "unshare")
    check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make mounts private")
    writable = (workdir, os.fsencode(os.devnull))
    for path in writable:
        check(libc.mount(path, path, None, _MS_BIND, None), f"bind {path!r}")
    set_attr(b"/", _AT_RECURSIVE, _MountAttr(attr_set=_MOUNT_ATTR_RDONLY))
    for path in writable:
        set_attr(path, 0, _MountAttr(attr_clr=_MOUNT_ATTR_RDONLY))
    os.chdir(workdir)  # the old cwd is the read-only mount underneath the bind mount
    for cap in range(cap_last + 1):
        check(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


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
