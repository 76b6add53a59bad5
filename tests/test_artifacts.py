"""Content-addressed keys, the manifest-last rule, and two processes asking for one artifact."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from skillweave.core.artifacts import (
    ArtifactError,
    ArtifactRef,
    artifact_lock,
    content_key,
    make_ref,
    run_clock,
    runs_so_far,
    write_manifest,
)


def test_key_depends_on_config_and_inputs_only():
    a = make_ref("/r", "filter", "math", {"x": 1, "y": [1, 2]}, {})
    assert a.key == make_ref("/r", "filter", "math", {"y": [1, 2], "x": 1}, {}).key  # key order is irrelevant
    assert a.key != make_ref("/r", "filter", "math", {"x": 2, "y": [1, 2]}, {}).key
    assert a.key != make_ref("/r", "filter", "code", {"x": 1, "y": [1, 2]}, {}).key
    b = make_ref("/r", "dpo", "math", {}, {"pairs": a})
    c = make_ref("/r", "dpo", "math", {}, {"pairs": make_ref("/r", "filter", "math", {"x": 3}, {})})
    assert b.key != c.key  # a changed upstream artifact gives a new downstream one
    assert b.inputs == {"pairs": a.key}
    assert content_key({"a": 1}) == content_key({"a": 1}) and len(a.key) == 16


def test_manifest_marks_completion(tmp_path):
    ref = make_ref(tmp_path, "generate", "math", {"n": 1}, {})
    ref.path.mkdir(parents=True)
    (ref.path / "samples.jsonl").write_text("{}\n")
    assert not ref.complete  # files without a manifest are a partial run
    manifest = write_manifest(ref, {"samples": 1}, started=time.time())
    assert ref.complete
    assert manifest["files"] == {"samples.jsonl": {"bytes": 3, "sha256": hashlib.sha256(b"{}\n").hexdigest()}}
    assert json.loads((ref.path / "manifest.json").read_text())["metrics"] == {"samples": 1}


def _produce(root: str, log: str) -> None:
    ref = make_ref(root, "merge", "all", {"m": 1}, {})
    with artifact_lock(ref):
        if ref.complete:
            with open(log, "a") as f:
                f.write("reused\n")
            return
        with open(log, "a") as f:
            f.write("start\n")
        time.sleep(0.5)  # long enough for the other process to be waiting on the lock
        (ref.path / "out.bin").write_bytes(b"x" * 1000)
        write_manifest(ref, {}, started=time.time())
        with open(log, "a") as f:
            f.write("end\n")


def test_two_processes_asking_for_one_artifact_take_turns(tmp_path):
    log = tmp_path / "log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_produce, args=(str(tmp_path), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    # One produced it from start to end without interleaving, the other found it complete.
    assert log.read_text().splitlines() == ["start", "end", "reused"]
    ref = make_ref(str(tmp_path), "merge", "all", {"m": 1}, {})
    assert isinstance(ref, ArtifactRef) and ref.complete
    assert (Path(ref.path) / "out.bin").stat().st_size == 1000


def _train_until_killed(root: str) -> None:
    with run_clock(make_ref(root, "dpo", "math", {"n": 1}, {}), every=0.05):
        time.sleep(60)


def test_the_manifest_counts_the_time_of_a_run_killed_before_it(tmp_path):
    """A run killed with SIGKILL (no `finally`) still leaves its time, to within the clock's period; the run
    that finishes the artifact adds it to its own in the manifest."""
    ref = make_ref(tmp_path, "dpo", "math", {"n": 1}, {})
    killed = mp.get_context("spawn").Process(target=_train_until_killed, args=(str(tmp_path),))
    killed.start()
    deadline = time.time() + 60
    while runs_so_far(ref)[0] < 0.5 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.join(10)
    earlier, runs = runs_so_far(ref)
    assert killed.exitcode == -signal.SIGKILL and runs == 1 and 0.5 <= earlier < 5
    with run_clock(ref, every=0.05) as started:
        time.sleep(0.2)
        (ref.path / "delta.safetensors").write_bytes(b"x")
        manifest = write_manifest(ref, {}, started)
    assert manifest["runs"] == 2 and manifest["seconds"] >= 0.2
    assert manifest["seconds_all_runs"] == pytest.approx(manifest["seconds"] + earlier, abs=0.02)
    assert list(manifest["files"]) == ["delta.safetensors"]  # the clocks are not the artifact's files,
    assert not (ref.path / ".runs").exists()  # and a finished artifact keeps none


@pytest.fixture
def stored(tmp_path):
    ref = make_ref(tmp_path, "dpo", "math", {"n": 1}, {}, command="python -m skillweave stage=dpo domain=math")
    ref.path.mkdir(parents=True)
    (ref.path / "config.json").write_text(json.dumps({"stage": "dpo", "command": ref.command}))  # as the engine writes it
    (ref.path / "delta.safetensors").write_bytes(bytes(range(256)) * 4)
    (ref.path / ".delta.safetensors.tmp123").write_bytes(b"half")  # a killed write's leftover
    write_manifest(ref, {}, started=time.time())
    return ref


def test_the_manifest_drops_leftovers_and_records_the_redo_command(stored):
    assert sorted(p.name for p in stored.path.iterdir()) == ["config.json", "delta.safetensors", "manifest.json"]
    assert stored.manifest()["command"] == "python -m skillweave stage=dpo domain=math"
    assert stored.complete and stored.problems() == []


@pytest.mark.parametrize(
    "damage, found_by_size",
    [
        ("flip", False),  # same size, other bytes: only the digest sees it
        ("truncate", True),
        ("delete", True),
        ("empty_manifest", True),
        ("invalid_manifest", True),
    ],
)
def test_a_damaged_artifact_is_reported_with_the_command_that_redoes_it(stored, damage, found_by_size):
    delta, manifest = stored.path / "delta.safetensors", stored.path / "manifest.json"
    if damage == "flip":
        data = bytearray(delta.read_bytes())
        data[100] ^= 0xFF
        delta.write_bytes(bytes(data))
    elif damage == "truncate":
        delta.write_bytes(delta.read_bytes()[:-1])
    elif damage == "delete":
        delta.unlink()
    elif damage == "empty_manifest":
        manifest.write_text("")
    else:
        manifest.write_text("{not json")
    assert stored.problems() != []
    redo = f"delete {stored.path} and run `python -m skillweave stage=dpo domain=math`"
    if found_by_size:
        with pytest.raises(ArtifactError, match="damaged") as info:
            stored.complete
        assert str(info.value).endswith(redo) and "\n" not in str(info.value)
    else:
        assert stored.complete  # sizes are checked always, digests when read (verify_input, skillweave-verify)
    from skillweave.verify import verify

    ((name, problems, how),) = verify(stored.root)
    assert name == str(stored) and how == redo


def test_an_input_with_other_bytes_is_refused_before_a_stage_reads_it(stored):
    from skillweave.core.engine import verify_input

    data = bytearray((stored.path / "delta.safetensors").read_bytes())
    data[7] ^= 1
    (stored.path / "delta.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"delta.safetensors differs from what was written \(sha256\)"):
        verify_input(stored)


def test_verify_command_exit_status(stored, capsys):
    from skillweave.verify import main

    main([str(stored.root)])
    assert capsys.readouterr().out == "1 artifacts checked, 0 damaged\n"
    (stored.path / "delta.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        main([str(stored.root)])
    assert info.value.code == 1 and "DAMAGED dpo/math-" in capsys.readouterr().out
