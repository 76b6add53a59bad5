"""The sandbox runs model-written code and reports how it ended without harming the caller.

A real fork bomb is deliberately not run: as root (this machine) the kernel ignores RLIMIT_NPROC,
so only the audit-hook prelude stands in its way, and a regression there would take the test
machine down. test_process_creation_is_refused checks that prelude with a single, harmless fork.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from skillweave import sandbox
from skillweave.sandbox import FILE_SIZE_LIMIT_BYTES, OUTPUT_LIMIT_BYTES, _namespaces, run_python


@pytest.fixture(params=["namespaces", "prelude only"])
def isolation(request, monkeypatch):
    """Containment must hold with the kernel layer (root) and with the audit-hook prelude alone
    (what an unprivileged CI runner gets)."""
    if request.param == "namespaces" and _namespaces() is None:
        pytest.skip("namespaces need root")
    if request.param == "prelude only":
        monkeypatch.setattr(sandbox, "_namespaces", lambda: None)
    return request.param


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


@pytest.mark.parametrize(
    "name, code",
    [
        ("open for writing", "open(TARGET, 'w').write('x')"),
        ("os.open with O_CREAT", "import os; os.open(TARGET, os.O_CREAT | os.O_WRONLY)"),
        ("delete", "import os; os.remove(EXISTING)"),
        ("rename", "import os; os.rename(EXISTING, TARGET)"),
        ("rmtree", "import shutil; shutil.rmtree(DIR)"),
    ],
)
def test_files_outside_the_workdir_are_untouched(tmp_path, isolation, name, code):
    existing = tmp_path / "existing.txt"
    existing.write_text("keep")
    target = tmp_path / "evil.txt"
    prefix = f"TARGET, EXISTING, DIR = {str(target)!r}, {str(existing)!r}, {str(tmp_path)!r}\n"
    result = run_python(prefix + code)
    assert not result.ok
    assert not target.exists()
    assert existing.read_text() == "keep"


@pytest.mark.skipif(_namespaces() is None, reason="mount namespaces need root")
def test_kernel_blocks_writes_the_prelude_cannot_see(tmp_path):
    # A path relative to a directory descriptor looks like a path inside the workdir to the audit
    # hook; the read-only mount namespace is what stops it.
    code = (
        f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n"
        "os.open('evil.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd)\n"
    )
    result = run_python(code)
    assert "Read-only file system" in result.reason
    assert not (tmp_path / "evil.txt").exists()


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


def test_code_removing_its_own_workdir_is_harmless(isolation):
    code = "import os, shutil\nos.mkdir('sub')\nos.chmod('sub', 0)\nshutil.rmtree(os.getcwd(), ignore_errors=True)"
    assert run_python(code).returncode == 0


def test_socket_connection_fails(isolation):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
        result = run_python(code)
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    assert not result.ok and "connected" not in result.stdout


@pytest.mark.parametrize(
    "name, code",
    [
        # the child would exit at once: harmless even if the guard were missing
        ("fork", "import os\nif os.fork() == 0:\n    os._exit(0)\n"),
        ("subprocess", "import subprocess; subprocess.run(['true'])"),
        ("os.system", "import os; assert os.system('true') == 0"),
        ("signal the caller", "import os; os.kill(os.getppid(), 0)"),  # signal 0 only probes
    ],
)
def test_process_creation_is_refused(isolation, name, code):
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
