"""The math domain's eval tasks: skillweave_math (reasoning-gym at its default difficulty) and
skillweave_arith (easy arithmetic), scored by the math rule set."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import datasets

from skillweave.core.errors import ConfigError
from skillweave.domains.math.source import (
    MATH_ARITH_POOL,
    MATH_EVAL_POOL,
    math_arith_eval_set,
    math_eval_set,
)
from skillweave.eval_tasks import SPLIT, EvalTask, as_dataset, register_eval_task
from skillweave.resources import resource_path
from skillweave.rules import RULE_FILES, load_rule_set

HERE = Path(__file__).parent


def load_math(n: int = 200, **_metadata: Any) -> datasets.DatasetDict:
    """skillweave's fixed-seed math evaluation set (disjoint from the training prompts), `n` rows.

    `n` comes from the YAML's `metadata` and can be overridden with `--metadata '{"n": 500}'`.
    """
    return _math_docs(math_eval_set(n=int(n)))


def load_math_arith(n: int = 500, **_metadata: Any) -> datasets.DatasetDict:
    """skillweave's fixed-seed easy-arithmetic evaluation set (disjoint from the training prompts), `n` rows."""
    return _math_docs(math_arith_eval_set(n=int(n)))


def _math_docs(rows: list[dict]) -> datasets.DatasetDict:
    return as_dataset([{"id": row["id"], "prompt": row["prompt"], "answer": str(row["meta"]["answer"])} for row in rows])


@functools.cache
def _math_rule_set() -> Any:
    rule_set = load_rule_set("math")
    if "final_number_matches" not in dict(rule_set.rules):
        raise ConfigError("rules/math.yaml: skillweave_math/arith score with final_number_matches; add it back to the rule set")
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




def _texts(load, pool: int) -> Callable[[], list[str]]:
    return lambda: list(load(n=pool)[SPLIT]["prompt"])


_FILES = (HERE / "source.py", HERE / "verifiers.py", Path(__file__), resource_path("rules", "math.yaml"), *RULE_FILES,
          Path(__file__).parents[2] / "prompts.py")
register_eval_task(EvalTask("skillweave_math", HERE / "skillweave_math.yaml", "exact_match", _texts(load_math, MATH_EVAL_POOL),
                            also_kept=("final_number",), digest_files=_FILES))
register_eval_task(EvalTask("skillweave_arith", HERE / "skillweave_arith.yaml", "exact_match",
                            _texts(load_math_arith, MATH_ARITH_POOL), also_kept=("final_number",), digest_files=_FILES))
