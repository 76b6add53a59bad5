"""Content-addressed keys, the manifest-last rule, and two processes asking for one artifact."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

from skillweave.core.artifacts import ArtifactRef, artifact_lock, content_key, make_ref, write_manifest


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
    assert manifest["files"] == {"samples.jsonl": {"bytes": 3}}
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
