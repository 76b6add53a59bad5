"""The code tasks as data: tasks.jsonl, one task a line in HumanEval's shape (task_id, prompt, tests,
entry_point, reference) plus its `split` ("train" or "eval"), written by build_tasks.py. The split is
stored rather than drawn, so adding a task never moves the held-out set."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

TASKS_FILE = Path(__file__).with_name("tasks.jsonl")


def read_tasks(path: Path = TASKS_FILE) -> tuple[dict, ...]:
    """The rows of a tasks file, in file order (build_tasks reads a file it is about to rewrite: not cached)."""
    with path.open(encoding="utf-8") as lines:
        return tuple(json.loads(line) for line in lines)


@cache
def load_tasks() -> tuple[dict, ...]:
    """The rows of TASKS_FILE, read once; callers must not modify them."""
    return read_tasks(TASKS_FILE)


def tasks_digest(path: Path = TASKS_FILE) -> str:
    """The file's content hash: the code_tasks source's version, so any edit gives generated samples a new key."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
