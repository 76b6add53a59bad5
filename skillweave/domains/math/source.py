"""The math domain's prompts: reasoning-gym generators with numeric answers (training source
`math_reasoning_gym`) and the two fixed eval pools it never draws from (skillweave_math, skillweave_arith)."""

from __future__ import annotations

import ast
import hashlib
import logging
import operator
import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from functools import cache
from typing import Any, Optional, Union

from skillweave.core.errors import ConfigError
from skillweave.prompts import PROMPT_SOURCES, SOURCE_VERSIONS, check_n, row, take

log = logging.getLogger(__name__)


# Math: reasoning-gym generators with numeric answers

DEFAULT_MATH_GENERATORS = (
    "basic_arithmetic",
    "gsm_symbolic",
    "chain_sum",
    "leg_counting",
    "simple_equations",
    "lcm",
    "simple_geometry",
)
MATH_INSTRUCTION = "Give the final answer as a number on the last line."
MATH_EVAL_SEED = 20_250_101
MATH_EVAL_POOL = 1000
"""math_eval_set(n) is the first n of a fixed pool of this size; training excludes the whole pool."""
MATH_ARITH_GENERATORS = {
    "basic_arithmetic": {"min_terms": 2, "max_terms": 3, "max_digits": 2, "allow_parentheses": False, "allow_negation": False},
    "chain_sum": {"min_terms": 2, "max_terms": 3, "max_digits": 2, "allow_negation": False},
}
"""Easy arithmetic (2-3 terms of at most 2 digits), the level recipes/math_online.yaml trains at: the
default eval set is beyond a 135M backbone (1% correct), this one is not (~20%), so a gain can show."""
MATH_ARITH_SEED = 20_250_102
MATH_ARITH_POOL = 1000
"""math_arith_eval_set(n) is the first n of a fixed pool of this size; training excludes it too."""


GeneratorSpec = Union[Sequence[str], Mapping[str, Optional[Mapping[str, Any]]]]
"""Generator names, or {name: settings}: reasoning-gym's config fields for that generator (its
difficulty: terms, digits, operators, ...), e.g. {"basic_arithmetic": {"max_terms": 2, "max_digits": 2}}."""


def _generator_settings(generators: GeneratorSpec) -> tuple[tuple[str, dict], ...]:
    if isinstance(generators, str):
        raise ConfigError(f"math_reasoning_gym: generators must be a list of names or a mapping, got the string {generators!r}")
    if isinstance(generators, Mapping):
        return tuple((str(name), dict(kw or {})) for name, kw in generators.items())
    return tuple((str(name), {}) for name in generators)


_EXPRESSION_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
EXPRESSION_GENERATORS = frozenset({"basic_arithmetic", "chain_sum"})
"""Generators whose items carry their expression (metadata["expression"]): the reference answer is
checked against its exact value. reasoning-gym 0.1.25's basic_arithmetic without parentheses
(`allow_parentheses: false`) shows a divisor other than the one it computed with and evaluates left
to right: `Calculate 4 / 4.` -> 2, `Calculate 89 - 19 * 4.` -> 280, two in five of its items at 2-3 terms."""


def expression_value(expression: str) -> Optional[Fraction]:
    """The exact value of an arithmetic expression of integers, + - * / and parentheses (true
    division); None when it divides by zero.

    >>> expression_value("89 - 19 * 4"), expression_value("6 - 2 / 0")
    (Fraction(13, 1), None)

    Raises:
        ValueError: anything else in the expression.
    """

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _EXPRESSION_OPS:
            return _EXPRESSION_OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not an arithmetic expression of integers: {expression!r}")

    try:
        return value(ast.parse(expression.strip(), mode="eval").body)
    except ZeroDivisionError:
        return None
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression of integers: {expression!r}") from None


def _math_items(n: int, seed: int, generators: GeneratorSpec, exclude: frozenset[str]) -> list[tuple[str, str, str]]:
    """(question, answer, generator), round-robin over the generators (a balanced mix), skipping
    repeated and excluded questions, and items whose answer is not their expression's exact value
    (EXPRESSION_GENERATORS; logged)."""
    os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")  # reasoning_gym imports matplotlib
    import reasoning_gym

    settings = _generator_settings(generators)
    if not settings:
        raise ConfigError("math_reasoning_gym: generators is empty")
    # Items are generated lazily and item i does not depend on size: the size only bounds the search,
    # with room for repeated questions and for all excluded ones coming from one generator.
    size = 2 * n + len(exclude) + 20
    datasets = []
    for name, kwargs in settings:
        if {"size", "seed"} & kwargs.keys():
            raise ConfigError(f"math_reasoning_gym: generator {name!r}: size and seed are set by skillweave, not in its settings")
        # Each generator gets its own seed, so adding one does not change the others' questions.
        sub_seed = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "big")
        try:
            dataset = reasoning_gym.create_dataset(name, size=size, seed=sub_seed, **kwargs)
        except (TypeError, AssertionError) as err:  # an unknown config field / a failed validate()
            raise ConfigError(f"math_reasoning_gym: generator {name!r} rejects the settings {kwargs}: {err}") from None
        datasets.append((name, dataset))
    items, seen, wrong = [], set(exclude), {}
    cursor = {name: 0 for name, _ in datasets}
    for _ in range(size):
        for name, dataset in datasets:
            # A repeated or excluded question skips the generator's turn; a wrong answer is a bug of the
            # generator and its next item takes the turn, so the mix stays balanced.
            while cursor[name] < size:
                item = dataset[cursor[name]]
                cursor[name] += 1
                question, answer = item["question"].strip(), str(item["answer"]).strip()
                if question in seen:
                    break
                seen.add(question)
                try:
                    gold = Fraction(answer.replace(",", ""))
                except ValueError:
                    raise ValueError(
                        f"math_reasoning_gym: generator {name!r} gave the non-numeric answer {answer!r}"
                    ) from None
                if name in EXPRESSION_GENERATORS and expression_value(item["metadata"]["expression"]) != gold:
                    wrong[name] = wrong.get(name, 0) + 1
                    continue
                items.append((question, answer, name))
                break
            if len(items) == n:
                break
        if len(items) == n:
            break
    if wrong:
        log.warning("reasoning-gym (seed %d): dropped %s items whose answer is not the value of their expression", seed, wrong)
    return items


def _math_rows(items: list[tuple[str, str, str]]) -> list[dict]:
    return [row(f"{q}\n\n{MATH_INSTRUCTION}", {"answer": a, "generator": g}) for q, a, g in items]


@cache
def _math_eval_pool() -> tuple[tuple[str, str, str], ...]:
    return tuple(_math_items(MATH_EVAL_POOL, MATH_EVAL_SEED, DEFAULT_MATH_GENERATORS, frozenset()))


@cache
def _math_arith_pool() -> tuple[tuple[str, str, str], ...]:
    return tuple(_math_items(MATH_ARITH_POOL, MATH_ARITH_SEED, MATH_ARITH_GENERATORS, frozenset()))


def math_eval_set(n: int = 200) -> list[dict]:
    """The held-out math prompts: fixed seed, default generators, never in a training source."""
    if not 0 < n <= MATH_EVAL_POOL:
        raise ConfigError(f"math_eval_set: n must be in 1..{MATH_EVAL_POOL}, got {n}")
    return _math_rows(list(_math_eval_pool()[:n]))


def math_arith_eval_set(n: int = 500) -> list[dict]:
    """The held-out easy-arithmetic prompts (MATH_ARITH_GENERATORS): fixed seed, never in a training source."""
    if not 0 < n <= MATH_ARITH_POOL:
        raise ConfigError(f"math_arith_eval_set: n must be in 1..{MATH_ARITH_POOL}, got {n}")
    return _math_rows(list(_math_arith_pool()[:n]))


SOURCE_VERSIONS["math_reasoning_gym"] = 3  # 2: the skillweave_arith pool excluded; 3: wrong reference answers dropped


@PROMPT_SOURCES.register("math_reasoning_gym")
def math_reasoning_gym(n: int, seed: int, generators: GeneratorSpec = DEFAULT_MATH_GENERATORS) -> list[dict]:
    """Math word and arithmetic problems; meta = {"answer": numeric gold as str, "generator": name}.

    `generators` also takes per-generator settings (GeneratorSpec), for an easier curriculum than the
    eval set's defaults:
    `'+domain.prompt_source.kwargs.generators={basic_arithmetic: {max_terms: 2, max_digits: 2}}'`.
    Questions of the eval pools (see math_eval_set, math_arith_eval_set) are dropped, so train and
    eval are disjoint.

    Raises:
        ConfigError: an unknown generator or setting. ValueError: one with non-numeric answers. DataError: fewer
            than n prompts.
    """
    check_n(n, "math_reasoning_gym")
    exclude = frozenset(question for question, _, _ in (*_math_eval_pool(), *_math_arith_pool()))
    return take(_math_rows(_math_items(n, seed, generators, exclude)), n, "math_reasoning_gym")


