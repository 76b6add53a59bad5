"""Content-addressed artifacts: `<root>/<stage>/<label>-<key>/`, files written atomically, manifest last.

The key hashes the stage's resolved config and its inputs' keys, so a changed setting or a changed
upstream artifact gives a new directory and an unchanged one is reused. `manifest.json` is written
last: a directory without it is partial (a killed run) and is resumed or redone, never read.
A per-directory lock file makes two jobs asking for the same artifact take turns.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from .errors import ArtifactError, MissingArtifactError

__all__ = ["ArtifactError", "MissingArtifactError"]  # re-exported: consumers see them where artifacts are

MANIFEST = "manifest.json"
CONFIG = "config.json"
RUNS = ".runs"  # hidden, so not the artifact's: one file per run that worked on it (run_clock)


def content_key(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ArtifactRef:
    """Where one stage's output for one label (a domain, or `all`) lives, and what made it."""

    stage: str
    label: str
    key: str
    root: Path
    config: dict
    inputs: dict[str, str]  # input name -> key of that input artifact
    command: str = field(default="", compare=False)
    """The command that produces this artifact ("" when unknown): named when it is missing."""
    outputs: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """The producing stage's declared outputs, name -> path inside the directory (`Stage.outputs`)."""

    @property
    def path(self) -> Path:
        return self.root / self.stage / f"{self.label}-{self.key}"

    @property
    def complete(self) -> bool:
        """True when the manifest exists and every file it lists has its recorded size (cheap: no
        reading); False for a partial directory (no manifest: a killed run, resumed or redone).

        Raises:
            ArtifactError: a manifest that is not this artifact's, or a file missing or of another size
                than recorded; the message says how to redo it.
        """
        if not (self.path / MANIFEST).is_file():
            return False
        problems = self.problems(digests=False)
        if problems:
            raise ArtifactError(f"{self}: damaged ({'; '.join(problems[:3])}): {self.redo}")
        return True

    @property
    def redo(self) -> str:
        """How to make this artifact again: delete it, then its command."""
        again = f"`{self.command}`" if self.command else "the command that made it"
        return f"delete {self.path} and run {again}"

    def problems(self, digests: bool = True) -> list[str]:
        """What is wrong with a directory that has a manifest: an unreadable or foreign manifest, a missing
        file, a file of another size than recorded or (with `digests`) of other content. [] when sound."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
            files = manifest["files"]
            if manifest["key"] != self.key or not isinstance(files, dict):
                return ["manifest.json is another artifact's"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return [f"manifest.json unreadable ({' '.join(str(e).split())[:80]})"]
        problems = []
        for name, rec in sorted(files.items()):
            path = self.path / name
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif path.stat().st_size != rec.get("bytes"):
                problems.append(f"{name} has {path.stat().st_size} bytes, {rec.get('bytes')} recorded")
            elif digests and "sha256" in rec and file_digest(path) != rec["sha256"]:
                problems.append(f"{name} differs from what was written (sha256)")
        return problems

    def file(self, name: str) -> Path:
        """The path of the output `name` the producing stage declares: consumers depend on the engine's
        declaration, never on the producer's module.

        Raises:
            KeyError: the stage declares no such output (a bug in the consumer).
        """
        if name not in self.outputs:
            raise KeyError(f"stage {self.stage} declares no output {name!r}; it declares {sorted(self.outputs)}")
        return self.path / self.outputs[name]

    def manifest(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())

    def __str__(self) -> str:
        return f"{self.stage}/{self.label}-{self.key}"


def make_ref(
    root: str | Path,
    stage: str,
    label: str,
    config: dict,
    inputs: Mapping[str, ArtifactRef],
    command: str = "",
    outputs: Mapping[str, str] | None = None,
) -> ArtifactRef:
    input_keys = {name: ref.key for name, ref in sorted(inputs.items())}
    key = content_key({"stage": stage, "label": label, "config": config, "inputs": input_keys})
    return ArtifactRef(stage, label, key, Path(root).resolve(), config, input_keys, command, dict(outputs or {}))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """One JSON object per line, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextmanager
def tmp_path_for(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` that replaces it only if the block finishes."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists() and tmp.is_file():
            tmp.unlink()


@contextmanager
def artifact_lock(ref: ArtifactRef, *, wait: bool = True) -> Iterator[bool]:
    """Exclusive lock on an artifact directory (fcntl, so it also holds on NFS with lockd); yields whether it
    is held. `wait=False`: where another job holds it, yields False at once instead of waiting its turn."""
    ref.path.mkdir(parents=True, exist_ok=True)
    with open(ref.path / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_file(ref: ArtifactRef, started: float) -> Path:
    return ref.path / RUNS / f"{started:.6f}-{os.getpid()}.json"


@contextmanager
def run_clock(ref: ArtifactRef, every: float = 60.0) -> Iterator[float]:
    """Yields this run's start and keeps its time so far in a hidden file of the artifact, rewritten every
    `every` seconds by a daemon thread, so that a run killed before the manifest still counts (to within
    `every`): write_manifest records the time of every run that made the artifact, not only the last one's,
    and the dry run says how long a partial artifact has taken so far. Only the process that writes the
    artifact uses it (rank 0 of a multi-process launch)."""
    started = time.time()
    path, stop = _run_file(ref, started), threading.Event()
    path.parent.mkdir(parents=True, exist_ok=True)

    def tick() -> None:
        try:
            atomic_write_json(path, {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                                     "seconds": round(time.time() - started, 2)})
        except OSError:  # a full disk or a concurrent sweep of temporary files: the next tick writes it again
            pass

    def beat() -> None:
        while not stop.wait(every):
            tick()

    tick()
    thread = threading.Thread(target=beat, name=f"run clock {ref.stage}/{ref.label}", daemon=True)
    thread.start()
    try:
        yield started
    finally:
        stop.set()
        thread.join()
        if (ref.path / MANIFEST).is_file():  # the manifest holds every run's time now: a finished artifact
            shutil.rmtree(ref.path / RUNS, ignore_errors=True)  # keeps no file that it does not list
        else:
            tick()


def runs_so_far(ref: ArtifactRef, but: Path | None = None) -> tuple[float, int]:
    """The seconds and number of the runs that worked on `ref` as their run_clock files say (`but` left out)."""
    seconds, runs = 0.0, 0
    for f in sorted((ref.path / RUNS).glob("*.json")):
        if f == but:
            continue
        try:
            seconds += float(json.loads(f.read_text())["seconds"])
            runs += 1
        except (OSError, ValueError, KeyError, TypeError):  # torn by a kill mid-write: not counted
            continue
    return seconds, runs


def write_manifest(ref: ArtifactRef, metrics: dict, started: float) -> dict:
    """The completion marker: inputs, config, every file's size and sha256, the stage's metrics, the time it
    took (`seconds`: this run, from `started`; `seconds_all_runs` and `runs`: with the earlier, killed runs
    that run_clock recorded) and the command that makes it again. Hidden files (temporary writes, the lock,
    the run clocks) are not the artifact's."""
    for p in sorted(ref.path.rglob(".*.tmp*"), reverse=True):  # what a killed write left, not the artifact
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    files = {}
    for p in sorted(ref.path.rglob("*")):
        rel = p.relative_to(ref.path)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and p.name != MANIFEST:
            files[str(rel)] = {"bytes": p.stat().st_size, "sha256": file_digest(p)}
    seconds = time.time() - started
    earlier, runs = runs_so_far(ref, but=_run_file(ref, started))
    manifest = {
        "stage": ref.stage,
        "label": ref.label,
        "key": ref.key,
        "command": ref.command,
        "inputs": ref.inputs,
        "files": files,
        "metrics": metrics,
        "seconds": round(seconds, 2),
        "seconds_all_runs": round(seconds + earlier, 2),
        "runs": runs + 1,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(ref.path / MANIFEST, manifest)
    return manifest


def manifest_seconds(manifest: dict) -> float:
    """What an artifact cost: every run's time (manifests written before run clocks have only the last's)."""
    return float(manifest.get("seconds_all_runs", manifest.get("seconds")) or 0.0)


def stored_artifacts(root: Path) -> list[ArtifactRef]:
    """Every artifact under `root` that has a manifest (as the manifest describes it)."""
    refs = []
    for manifest in sorted(Path(root).glob(f"*/*/{MANIFEST}")):
        stage, (label, _, key) = manifest.parent.parent.name, manifest.parent.name.rpartition("-")
        command = ""
        for source in (manifest, manifest.with_name(CONFIG)):  # an unreadable manifest: config.json, written first
            try:
                command = json.loads(source.read_text()).get("command", "")
                break
            except (OSError, ValueError, AttributeError):
                continue
        refs.append(ArtifactRef(stage, label, key, Path(root).resolve(), {}, {}, command))
    return refs
