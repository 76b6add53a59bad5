"""The code domain's prompts: function-writing tasks with unit tests and a reference solution each
(tasks.jsonl beside this file, written by build_tasks.py); the source `code_tasks` holds the train split,
skillweave_codetasks the eval split."""

from __future__ import annotations

import logging
import random
from functools import cache
from typing import Optional

from skillweave.domains.code.tasks import load_tasks, tasks_digest
from skillweave.prompts import (
    PROMPT_SOURCES,
    REFERENCE_ANSWERS,
    SOURCE_VERSIONS,
    check_n,
    row,
    take,
)

log = logging.getLogger(__name__)


# Code: function-writing tasks with unit tests and a reference solution each
# (skillweave/domains/code/tasks.jsonl, written by build_tasks.py next to it)


CODE_EVAL_POOL = sum(task["split"] == "eval" for task in load_tasks())
"""skillweave_codetasks holds out the tasks.jsonl rows whose split is "eval"; the training source has
the rest. The split is by task, so most held-out tasks have family siblings (the same function with
another constant) in training: a held-out set at the training level."""


def _code_rows(split: str) -> list[dict]:
    tasks = [t for t in load_tasks() if t["split"] == split]
    return [row(t["prompt"], {"entry_point": t["entry_point"], "tests": t["tests"]}) for t in tasks]


def code_eval_set() -> list[dict]:
    """The CODE_EVAL_POOL held-out code tasks in file order, never in a training source."""
    return _code_rows("eval")


@cache
def _code_references() -> dict[str, str]:
    return {t["prompt"]: f"```python\n{t['reference']}```" for t in load_tasks()}


@REFERENCE_ANSWERS.register("code_tasks")
def code_task_reference(prompt: str) -> Optional[str]:
    """The task's reference solution as a bare ```python block: the form the code rules extract and
    the eval asks for."""
    return _code_references().get(prompt)


SOURCE_VERSIONS["code_tasks"] = tasks_digest()  # any edit of tasks.jsonl counts


@PROMPT_SOURCES.register("code_tasks")
def code_tasks(n: int, seed: int) -> list[dict]:
    """Function-writing tasks, the skillweave_codetasks pool excluded: the "train" rows of tasks.jsonl
    in a seeded order; meta = {"entry_point": name, "tests": assert lines}.

    Raises:
        DataError: n exceeds the number of training tasks.
    """
    check_n(n, "code_tasks")
    rows = _code_rows("train")
    random.Random(seed).shuffle(rows)
    return take(rows, n, "code_tasks")


