"""The sandbox runs model-written code and reports how it ended without harming the caller.

The escape tests run every attempt in a separate caller process (so an attempt that kills its caller
shows as a dead caller, not a dead pytest) with the audit-hook guard disabled first: the guard only
names reasons, the kernel has to stop each attempt. They run in each isolation mode this machine
offers: namespaces as root, a user namespace (forced as root, and as the unprivileged uid 65534),
and the opted-in mode without namespaces (seccomp, Landlock and rlimits only).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skillweave import sandbox
from skillweave.core.errors import ConfigError
from skillweave.sandbox import FILE_SIZE_LIMIT_BYTES, OUTPUT_LIMIT_BYTES, run_python

REPO = Path(sandbox.__file__).resolve().parents[1]
NOBODY = 65534

# Finds the audit hook among live objects and swaps its code for a no-op.
DISABLE_GUARD = """
import gc, types
def _disable_guard():
    for f in gc.get_objects():
        if type(f) is types.FunctionType and f.__name__ == "hook" and f.__closure__:
            names = f.__code__.co_freevars
            source = "def outer():\\n" + "".join(f"    {n} = None\\n" for n in names)
            source += f"    def hook(event, args):\\n        return ({', '.join(names)},)\\n    return hook\\n"
            scope = {}
            exec(source, scope)
            f.__code__ = scope["outer"]().__code__
            return
    raise RuntimeError("guard not found")
_disable_guard()
"""

# A process that would outlive the sample: TOKEN in its argv and environment, so the caller finds it.
_SLEEPER = "[sys.executable, '-c', 'import time; time.sleep(3)', TOKEN]"
_DETACHED_SLEEPER = "[sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(3)', TOKEN]"
_LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"

# name -> code; each must fail, with no effect outside. Names: CALLER (the caller's pid), OUTSIDE (a
# directory of the caller holding keep.txt and secret.txt), TOKEN, TCP_PORT, UDP_PORT, UNIX_PATH,
# UNIX_DGRAM_PATH, ABSTRACT_NAME (servers of the caller).
ESCAPES = {
    # kill the caller
    "the reported program: pidfd_send_signal SIGKILL to the parent": (
        "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), 9)"),
    "os.kill the caller": "os.kill(CALLER, signal.SIGUSR1)",
    "os.kill the parent": "os.kill(os.getppid(), signal.SIGUSR1)",
    "pidfd of the caller": "signal.pidfd_send_signal(os.pidfd_open(CALLER), signal.SIGUSR1)",
    "/proc directory as pidfd": (
        "signal.pidfd_send_signal(os.open(f'/proc/{CALLER}', os.O_RDONLY), signal.SIGUSR1)"),
    "ctypes kill": _LIBC + "if libc.kill(CALLER, signal.SIGUSR1):\n    raise OSError(ctypes.get_errno(), 'kill')",
    "kill the caller's group": "os.killpg(os.getpgid(CALLER), signal.SIGUSR1)",
    "probe every process": "os.kill(-1, 0)",
    "ptrace the caller": (
        _LIBC + "if libc.ptrace(16, CALLER, None, None):\n    raise OSError(ctypes.get_errno(), 'ptrace')"),
    "write the caller's memory": "open(f'/proc/{CALLER}/mem', 'wb').write(b'x')",
    # create a surviving process
    "fork, setsid and exec": f"if os.fork() == 0:\n    os.setsid()\n    os.execv(sys.executable, {_SLEEPER})",
    "subprocess in a new session": f"import subprocess\nsubprocess.Popen({_SLEEPER}, start_new_session=True)",
    "posix_spawn": f"os.posix_spawn(sys.executable, {_SLEEPER}, os.environ, setsid=True)",
    "_posixsubprocess.fork_exec": (
        "import multiprocessing.util\n"
        f"multiprocessing.util.spawnv_passfds(os.fsencode(sys.executable), {_DETACHED_SLEEPER}, ())"),
    "multiprocessing spawn": (
        "import multiprocessing\nmultiprocessing.get_context('spawn').Process(target=time.sleep, args=(3,)).start()"),
    "multiprocessing forkserver": (
        "import multiprocessing\n"
        "multiprocessing.get_context('forkserver').Process(target=time.sleep, args=(3,)).start()"),
    "os.system in the background": (
        "assert os.system(f'{sys.executable} -c \"import os, time; os.setsid(); time.sleep(3)\" {TOKEN} &') == 0"),
    "ctypes fork": (
        f"{_LIBC}pid = libc.fork()\nif pid == 0:\n    os.setsid()\n    os.execv(sys.executable, {_SLEEPER})\n"
        "if pid < 0:\n    raise OSError(ctypes.get_errno(), 'fork')"),
    "outlive the timeout": (
        f"if os.fork() == 0:\n    os.setsid()\n    os.execv(sys.executable, {_SLEEPER})\nwhile True:\n    pass"),
    # read the caller's secrets
    "the parent's environ": "print(open(f'/proc/{os.getppid()}/environ').read())",
    "the caller's environ": "print(open(f'/proc/{CALLER}/environ').read())",
    "every process's environ": (
        "for pid in os.listdir('/proc'):\n    if pid.isdigit() and int(pid) != os.getpid():\n"
        "        try:\n            print(open(f'/proc/{pid}/environ').read())\n"
        "        except OSError:\n            pass"),
    "PID 1's environ": "print(open('/proc/1/environ').read())",
    "the caller's memory map": "print(open(f'/proc/{CALLER}/maps').read())",
    "the caller's private file": "print(open(f'{OUTSIDE}/secret.txt').read())",
    # write or delete outside the working directory
    "open for writing": "open(f'{OUTSIDE}/evil.txt', 'w').write('x')",
    "append": "open(f'{OUTSIDE}/keep.txt', 'a').write('x')",
    "delete": "os.remove(f'{OUTSIDE}/keep.txt')",
    "rename": "os.rename(f'{OUTSIDE}/keep.txt', f'{OUTSIDE}/moved.txt')",
    "rmtree": "import shutil\nshutil.rmtree(OUTSIDE)",
    "chmod": "os.chmod(f'{OUTSIDE}/keep.txt', 0o777)",
    "utime": "os.utime(f'{OUTSIDE}/keep.txt', (0, 0))",
    "setxattr": "os.setxattr(f'{OUTSIDE}/keep.txt', 'user.evil', b'x')",
    "create through dir_fd": (
        "fd = os.open(OUTSIDE, os.O_RDONLY)\nos.open('evil.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd)"),
    "unlink through dir_fd": "fd = os.open(OUTSIDE, os.O_RDONLY)\nos.unlink('keep.txt', dir_fd=fd)",
    "sqlite3": "import sqlite3\nsqlite3.connect(f'{OUTSIDE}/evil.db').execute('create table t (x)')",
    "symlink out of the workdir": "os.symlink(f'{OUTSIDE}/keep.txt', 'link')\nopen('link', 'w').write('x')",
    "hard link into the workdir": "os.link(f'{OUTSIDE}/keep.txt', 'hard')\nopen('hard', 'w').write('x')",
    "through the caller's /proc root": "open(f'/proc/{CALLER}/root{OUTSIDE}/evil.txt', 'w').write('x')",
    # reach a socket outside
    "TCP connect": "socket.create_connection(('127.0.0.1', TCP_PORT), timeout=2)",
    "UDP sendto": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', UDP_PORT))",
    "Unix socket connect": "socket.socket(socket.AF_UNIX).connect(UNIX_PATH)",
    "Unix datagram sendto": "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'x', UNIX_DGRAM_PATH)",
    "abstract Unix socket": "socket.socket(socket.AF_UNIX).connect('\\0' + ABSTRACT_NAME)",
}
# These must succeed, or the escapes above would prove nothing.
CONTROLS = {
    "the guard is off": _LIBC + "print(libc.getpid() == os.getpid())",
    "threads work": "import threading\nt = threading.Thread(target=print, args=(True,))\nt.start()\nt.join()",
}
NEEDS_LANDLOCK = {"the caller's private file"}  # as the same uid, only Landlock keeps it unread
ERRORS_OF_THE_TEST_ITSELF = ("NameError", "SyntaxError", "TypeError", "AttributeError", "guard not found")

# The caller: runs each attempt in the sandbox, then looks for its effects. Needs only the stdlib and
# skillweave.sandbox, so an interpreter the unprivileged user can run will do.
_CALLER = r"""
import json, os, signal, socket, sys, tempfile
from pathlib import Path
from skillweave import sandbox

request = json.load(sys.stdin)
mode, prefix = request["mode"], request["prefix"]
if mode == "user namespace":
    flags = sandbox._NAMESPACES | sandbox._CLONE_NEWUSER
    sandbox._isolation = lambda: (flags, "")
    if not sandbox._execute("pass", 10, 256, flags).ok:
        sys.exit(print(json.dumps({"skip": "the kernel refuses a user namespace"})))
elif mode == "no namespaces":
    sandbox._isolation = lambda: (None, "simulated by the test")
    os.environ[sandbox.ALLOW_WEAK_ISOLATION_ENV] = "1"
elif sandbox._isolation()[0] is None:
    sys.exit(print(json.dumps({"skip": "no namespaces: " + sandbox._isolation()[1]})))

signals = []
signal.signal(signal.SIGUSR1, lambda *_: signals.append(1))
sockets = Path(tempfile.mkdtemp())
servers = {
    "tcp": socket.create_server(("127.0.0.1", 0)),
    "udp": socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    "unix": socket.socket(socket.AF_UNIX),
    "unix dgram": socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM),
    "abstract": socket.socket(socket.AF_UNIX),
}
servers["udp"].bind(("127.0.0.1", 0))
servers["unix"].bind(str(sockets / "stream"))
servers["unix dgram"].bind(str(sockets / "dgram"))
abstract = "skillweave-test-" + os.urandom(4).hex()
servers["abstract"].bind("\0" + abstract)
for s in servers.values():
    if s.type == socket.SOCK_STREAM:
        s.listen()
    s.setblocking(False)


def connections():
    found = []
    for name, s in servers.items():
        try:
            s.accept() if s.type == socket.SOCK_STREAM else s.recv(16)
            found.append(name)
        except BlockingIOError:
            pass
    return found


def holders(token):
    found = []
    for proc in Path("/proc").iterdir():
        for name in ("cmdline", "environ"):
            try:
                if token.encode() in (proc / name).read_bytes():
                    found.append(int(proc.name))
            except (OSError, ValueError):
                pass
    return sorted(set(found) - {os.getpid()})


results = {}
for name, code in request["codes"].items():
    outside = Path(tempfile.mkdtemp())
    (outside / "keep.txt").write_text("keep")
    (outside / "secret.txt").write_text(os.environ["SKILLWEAVE_TEST_SECRET"])
    (outside / "secret.txt").chmod(0o600)
    token = "skillweave-escape-" + os.urandom(4).hex()
    names = {
        "CALLER": os.getpid(), "OUTSIDE": str(outside), "TOKEN": token,
        "TCP_PORT": servers["tcp"].getsockname()[1], "UDP_PORT": servers["udp"].getsockname()[1],
        "UNIX_PATH": str(sockets / "stream"), "UNIX_DGRAM_PATH": str(sockets / "dgram"), "ABSTRACT_NAME": abstract,
    }
    header = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    header += f"import os, signal, socket, sys, time\nos.environ['SKILLWEAVE_ESCAPE'] = {token!r}\n"
    timeout = 0.5 if "while True" in code else 5
    result = sandbox.run_python(header + prefix + code, timeout_s=timeout)
    keep = outside / "keep.txt"
    results[name] = {
        "ok": result.ok, "reason": result.reason, "output": result.stdout + result.stderr,
        "signalled": len(signals), "survivors": holders(token), "connections": connections(),
        "outside": sorted(os.listdir(outside)) if outside.exists() else None,
        "keep": keep.exists() and [keep.read_text(), oct(keep.stat().st_mode & 0o777), keep.stat().st_mtime > 0,
                                   os.listxattr(keep)],
    }
    signals.clear()
print(json.dumps({"results": results, "landlock": sandbox._host().landlock_abi}))
"""


@functools.cache
def _interpreter_for(uid: int | None) -> str | None:
    """A Python that `uid` can run and import this checkout's sandbox with (None: the current user)."""
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3", shutil.which("python3")]):
        try:
            if python and _caller(python, uid, ["-c", "import skillweave.sandbox"]).returncode == 0:
                return python
        except OSError:  # not executable by uid
            pass
    return None


def _caller(python: str, uid: int | None, args: list[str], stdin: str = "", secret: str = ""):
    """Runs `python args` as `uid` in its own session, with `secret` in its environment from the start."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "SKILLWEAVE_TEST_SECRET": secret}
    ids = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
    return subprocess.run([python, *args], check=False, input=stdin, capture_output=True, text=True, cwd="/",
                          env=env, start_new_session=True, timeout=300, **ids)


CALLERS = {
    "caller: this user, namespaces": (None, "namespaces"),
    "caller: root, forced user namespace": (None, "user namespace"),
    "caller: this user, no namespaces (opted in)": (None, "no namespaces"),
    "caller: uid 65534, namespaces": (NOBODY, "namespaces"),
    "caller: uid 65534, no namespaces (opted in)": (NOBODY, "no namespaces"),
}


@pytest.fixture(scope="module", params=list(CALLERS))
def escape_run(request) -> dict:
    uid, mode = CALLERS[request.param]
    if (uid is not None or mode == "user namespace") and os.geteuid() != 0:
        pytest.skip("needs root (to switch user, or to force a user namespace as root)")
    python = _interpreter_for(uid)
    if python is None:
        pytest.skip(f"no Python that uid {uid} can run and import {REPO}/skillweave/sandbox.py with")
    secret = "skillweave-secret-" + os.urandom(8).hex()
    codes = {**ESCAPES, **CONTROLS}
    stdin = json.dumps({"mode": mode, "prefix": DISABLE_GUARD, "codes": codes})
    proc = _caller(python, uid, ["-c", _CALLER], stdin, secret)
    assert proc.returncode == 0, f"the caller died (rc {proc.returncode}); stderr:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    if "skip" in report:
        pytest.skip(report["skip"])
    return {"secret": secret, **report}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_escape_fails_without_effect(escape_run, name):
    result = escape_run["results"][name]
    if name in NEEDS_LANDLOCK and not escape_run["landlock"]:
        pytest.skip("no Landlock on this kernel: code running as the caller's uid can read the caller's files")
    assert not result["ok"], result
    assert not any(error in result["reason"] for error in ERRORS_OF_THE_TEST_ITSELF), result
    assert result["signalled"] == 0, result
    assert result["survivors"] == [], result
    assert result["connections"] == [], result
    assert result["outside"] == ["keep.txt", "secret.txt"], result
    assert result["keep"] == ["keep", "0o644", True, []], result
    assert escape_run["secret"] not in result["output"], result


@pytest.mark.parametrize("name", list(CONTROLS))
def test_controls_succeed(escape_run, name):
    result = escape_run["results"][name]
    assert result["ok"], result
    assert result["output"] == "True\n", result


@pytest.fixture
def namespaces_only(monkeypatch):
    """The namespace layer alone: no seccomp filter, no Landlock."""
    if sandbox._isolation()[0] is None:
        pytest.skip(f"no namespaces here: {sandbox._isolation()[1]}")
    host = dataclasses.replace(sandbox._host(), machine=None, landlock_abi=0)
    monkeypatch.setattr(sandbox, "_host", lambda: host)


@pytest.mark.parametrize("ends", ["exits", "times out"])
def test_pid_namespace_alone_ends_what_the_code_started(namespaces_only, ends):
    token = "skillweave-escape-" + os.urandom(4).hex()
    code = (
        DISABLE_GUARD + "import os, sys, time\n"
        f"if os.fork() == 0:\n    os.execv(sys.executable, [sys.executable, '-c', "
        f"'import os, time; os.setsid(); time.sleep(30)', {token!r}])\nprint('forked')\n"
        + ("time.sleep(0.2)\n" if ends == "exits" else "while True:\n    pass\n")
    )
    result = run_python(code, timeout_s=1)
    assert result.stdout == "forked\n" and result.timed_out == (ends == "times out"), result
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert token.encode() not in cmdline.read_bytes(), f"{cmdline.parent} survived"
        except OSError:
            pass


@pytest.mark.parametrize(
    "name, code, error",
    [
        ("write through dir_fd", "fd = os.open(DIR, os.O_RDONLY)\nos.open('x', os.O_CREAT | os.O_WRONLY, dir_fd=fd)",
         "Read-only file system"),
        ("the init's environ", "print(open('/proc/1/environ').read())", "Permission denied"),
        ("the caller's pid", "os.kill(CALLER, 0)", "No such process"),
        ("TCP", "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)", "Network is unreachable"),
    ],
)
def test_namespaces_alone_contain(namespaces_only, tmp_path, name, code, error):
    prefix = f"import os\nDIR, CALLER = {str(tmp_path)!r}, {os.getpid()}\n"
    result = run_python(DISABLE_GUARD + prefix + code)
    assert not result.ok and error in result.reason, result
    assert os.listdir(tmp_path) == []


def test_without_namespaces_it_refuses_unless_opted_in(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_isolation", lambda: (None, "simulated by the test"))
    monkeypatch.delenv(sandbox.ALLOW_WEAK_ISOLATION_ENV, raising=False)
    sandbox._log_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="skillweave.sandbox"):
        for _ in range(2):
            with pytest.raises(ConfigError, match=f"{sandbox.ALLOW_WEAK_ISOLATION_ENV}=1"):
                run_python("print(1)")
        monkeypatch.setenv(sandbox.ALLOW_WEAK_ISOLATION_ENV, "1")
        assert run_python("print(1)").stdout == "1\n"
        assert run_python("print(2)").stdout == "2\n"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # said once, loudly, for each state
    assert "refusing" in messages[0] and "WITHOUT namespace isolation" in messages[1]


def test_success_returns_stdout():
    result = run_python("print(sum(range(10)))")
    assert (result.ok, result.returncode, result.timed_out, result.reason) == (True, 0, False, "ok")
    assert result.stdout == "45\n"


@pytest.mark.parametrize(
    "name, code, reason_part",
    [
        # the failing assert's line is named, so a rule can report which test failed
        ("assertion", "def f(x):\n    return x\nassert f(1) == 1\nassert f(2) == 3\n",
         "AssertionError at line 4: assert f(2) == 3"),
        # bad code is a result, never an exception in the caller
        ("syntax error", "def f(:\n", "SyntaxError"),
        ("exception", "raise ValueError('boom')", "ValueError: boom"),
        # a non-zero exit without a traceback still fails
        ("exit code", "import sys; sys.exit(3)", "exit 3"),
        ("killed by a signal", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "killed: SIGTERM"),
    ],
)
def test_failures_are_reported(name, code, reason_part):
    result = run_python(code)
    assert not result.ok and not result.timed_out
    assert reason_part in result.reason


def test_infinite_loop_times_out_fast():
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout_s=1)
    elapsed = time.monotonic() - start
    assert result.timed_out and not result.ok
    assert result.reason == "timeout after 1s"
    assert elapsed < 3


@pytest.mark.parametrize(
    "name, code",
    [
        ("one huge allocation", "x = bytearray(2 * 1024**3)"),  # 2 GiB against a 256 MiB address space
        ("growing list", "x = []\nwhile True:\n    x.append(bytearray(10**7))"),
    ],
)
def test_memory_hog_is_stopped(name, code):
    result = run_python(code, timeout_s=5, memory_mb=256)
    assert not result.ok and not result.timed_out
    assert "memory limit" in result.reason


def test_writes_inside_the_workdir_work_and_are_removed():
    code = (
        "import os, tempfile\nopen('a.txt', 'w').write('x')\nos.mkdir('sub')\n"
        "print(os.getcwd())\nprint(tempfile.gettempdir())"
    )
    result = run_python(code)
    assert result.ok, result.reason
    workdir, tempdir = result.stdout.split()
    assert tempdir == workdir  # tempfile writes land in the workdir too
    assert not os.path.exists(workdir)


def test_code_removing_its_own_workdir_is_harmless():
    code = "import os, shutil\nos.mkdir('sub')\nos.chmod('sub', 0)\nshutil.rmtree(os.getcwd(), ignore_errors=True)"
    assert run_python(code).returncode == 0


@pytest.mark.parametrize(
    "name, code",
    [
        ("fork", "import os\nif os.fork() == 0:\n    os._exit(0)\n"),
        ("subprocess", "import subprocess; subprocess.run(['true'])"),
        ("os.system", "import os; assert os.system('true') == 0"),
        ("signal the caller", "import os; os.kill(os.getppid(), 0)"),  # signal 0 only probes
    ],
)
def test_the_guard_names_the_reason(name, code):
    result = run_python(code)
    assert not result.ok
    assert "PermissionError: sandbox" in result.reason


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    result = run_python("import os; print(' '.join(sorted(os.environ)))")
    assert set(result.stdout.split()) <= {"PATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE"}
    assert "HF_TOKEN" not in result.stdout


def test_resource_limits_are_set():
    code = (
        "import resource as r\n"
        "print(*(r.getrlimit(x)[0] for x in (r.RLIMIT_CPU, r.RLIMIT_AS, r.RLIMIT_FSIZE, r.RLIMIT_CORE)))\n"
        f"open('big', 'wb').write(b'0' * {FILE_SIZE_LIMIT_BYTES + 2**20})\n"
    )
    result = run_python(code, timeout_s=2.5, memory_mb=300)
    assert result.stdout.split() == ["4", str(300 * 2**20), str(FILE_SIZE_LIMIT_BYTES), "0"]
    assert "File too large" in result.reason


def test_output_is_truncated():
    result = run_python("print('x' * 200_000)")
    assert result.ok
    assert result.stdout.startswith("x" * OUTPUT_LIMIT_BYTES)
    assert result.stdout.endswith("more bytes cut by the sandbox]")


def test_working_directories_of_a_killed_caller_are_removed(tmp_path, monkeypatch):
    import tempfile

    from skillweave import sandbox

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{sandbox.WORKDIR_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{sandbox.WORKDIR_PREFIX}{os.getppid()}-def"  # its caller is alive: kept
    for d in (stale, live):
        (d / "solution.py").parent.mkdir(parents=True)
        (d / "solution.py").write_text("print(1)\n")
    sandbox._remove_stale_workdirs.cache_clear()
    assert sandbox.run_python("print(2)").ok
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]  # its own working directory is gone too
