"""Another job on the same artifacts_root, played by this process: it holds an artifact's lock as a job
making that artifact would, and lets go of it when the test says (the job stopped without finishing)."""

from __future__ import annotations

from skillweave.core import engine
from skillweave.core.artifacts import ArtifactRef, artifact_lock


def hold_as_another_job(monkeypatch, held: ArtifactRef, other_job: dict) -> None:
    """Hold `held`'s lock until the test calls `stop(other_job)`; the engine waiting for it meanwhile fails
    the test (in one process that wait would never end)."""
    other_job["lock"] = artifact_lock(held)
    assert other_job["lock"].__enter__()

    def lock(ref: ArtifactRef, *, wait: bool = True):
        assert not (wait and ref.path == held.path and "lock" in other_job), f"waited while {held} was held"
        return artifact_lock(ref, wait=wait)

    monkeypatch.setattr(engine, "artifact_lock", lock)


def stop(other_job: dict) -> None:
    """The other job stops before finishing what it held (its lock is let go of; once only)."""
    if "lock" in other_job:
        other_job.pop("lock").__exit__(None, None, None)
