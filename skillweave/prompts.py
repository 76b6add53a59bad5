"""Offline, seeded prompt sources for the self-specialization domains (math, code, instructions, dialogue).

Every source is `fn(n, seed, **kwargs) -> list[dict]` with rows
`{"id": content hash of the prompt, "prompt": the user message (no chat template), "meta": dict}`:
the same seed gives the same rows, prompts are distinct, and a source that cannot produce `n`
distinct prompts raises ValueError. `meta` holds what the domain's rules need (rules/<domain>.yaml).
A source is prefix-stable: its first n rows for a seed are the first n of any longer draw with that
seed, so online DPO round r can take rows r*n .. (r+1)*n - 1 and see prompts no earlier round saw.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import logging
import operator
import os
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction
from functools import cache
from typing import Any, Callable, Optional, Union

from skillweave.domains.code.tasks import load_tasks, tasks_digest
from skillweave.core.errors import DataError
from skillweave.core.registry import Registry

log = logging.getLogger(__name__)

PROMPT_SOURCES: Registry[Callable[..., list[dict]]] = Registry("prompt source")
REFERENCE_ANSWERS: Registry[Callable[[str], Optional[str]]] = Registry("reference answer source")
"""Per prompt source name: prompt text -> a correct answer in the form the model should give, or None
(filter.strategy=reference_vs_fail)."""


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _row(prompt: str, meta: dict) -> dict:
    return {"id": prompt_id(prompt), "prompt": prompt, "meta": meta}


def _check_n(n: int, source: str) -> None:
    if n <= 0:
        raise ValueError(f"{source}: n must be positive, got {n}")


class SourceExhausted(DataError):
    """A finite source was asked for more prompts than it has (`available`)."""

    def __init__(self, source: str, available: int, n: int):
        super().__init__(f"{source}: could produce only {available} distinct prompts, {n} were asked for")
        self.available = available


def _take(rows: list[dict], n: int, source: str) -> list[dict]:
    if len(rows) < n:
        raise SourceExhausted(source, len(rows), n)
    return rows[:n]


TEMPLATE_DRAW = 256
"""Rows of a source's draw that the contamination check reads its template wording from."""


def template_draw(name: str, seed: int, kwargs: Mapping[str, Any]) -> list[dict]:
    """The first TEMPLATE_DRAW rows of a source's seeded draw, or all of a smaller source: wording
    many of them share is the source's template, which a small slice alone cannot tell apart from a
    leaked eval item (a code task whose family has a held-out sibling)."""
    source = PROMPT_SOURCES.get(name)
    try:
        return source(TEMPLATE_DRAW, seed, **kwargs)
    except SourceExhausted as exhausted:
        return source(exhausted.available, seed, **kwargs)


SOURCE_VERSIONS = {"code_tasks": tasks_digest(), "math_reasoning_gym": 3}
"""Sources whose rows can change under the same name and settings (code_tasks: the digest of its
tasks.jsonl, so any edit counts; math_reasoning_gym 2: the skillweave_arith eval pool excluded, 3:
items with a wrong reference answer dropped); the generate stage puts the version in its artifact
key, so samples of an older table are not reused."""


# ---------------------------------------------------------------------------------------------
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
        raise ValueError(f"math_reasoning_gym: generators must be a list of names or a mapping, got the string {generators!r}")
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
        raise ValueError("math_reasoning_gym: generators is empty")
    # Items are generated lazily and item i does not depend on size: the size only bounds the search,
    # with room for repeated questions and for all excluded ones coming from one generator.
    size = 2 * n + len(exclude) + 20
    datasets = []
    for name, kwargs in settings:
        if {"size", "seed"} & kwargs.keys():
            raise ValueError(f"math_reasoning_gym: generator {name!r}: size and seed are set by skillweave, not in its settings")
        # Each generator gets its own seed, so adding one does not change the others' questions.
        sub_seed = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "big")
        try:
            dataset = reasoning_gym.create_dataset(name, size=size, seed=sub_seed, **kwargs)
        except (TypeError, AssertionError) as err:  # an unknown config field / a failed validate()
            raise ValueError(f"math_reasoning_gym: generator {name!r} rejects the settings {kwargs}: {err}") from None
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
    return [_row(f"{q}\n\n{MATH_INSTRUCTION}", {"answer": a, "generator": g}) for q, a, g in items]


@cache
def _math_eval_pool() -> tuple[tuple[str, str, str], ...]:
    return tuple(_math_items(MATH_EVAL_POOL, MATH_EVAL_SEED, DEFAULT_MATH_GENERATORS, frozenset()))


@cache
def _math_arith_pool() -> tuple[tuple[str, str, str], ...]:
    return tuple(_math_items(MATH_ARITH_POOL, MATH_ARITH_SEED, MATH_ARITH_GENERATORS, frozenset()))


def math_eval_set(n: int = 200) -> list[dict]:
    """The held-out math prompts: fixed seed, default generators, never in a training source."""
    if not 0 < n <= MATH_EVAL_POOL:
        raise ValueError(f"math_eval_set: n must be in 1..{MATH_EVAL_POOL}, got {n}")
    return _math_rows(list(_math_eval_pool()[:n]))


def math_arith_eval_set(n: int = 500) -> list[dict]:
    """The held-out easy-arithmetic prompts (MATH_ARITH_GENERATORS): fixed seed, never in a training source."""
    if not 0 < n <= MATH_ARITH_POOL:
        raise ValueError(f"math_arith_eval_set: n must be in 1..{MATH_ARITH_POOL}, got {n}")
    return _math_rows(list(_math_arith_pool()[:n]))


@PROMPT_SOURCES.register("math_reasoning_gym")
def math_reasoning_gym(n: int, seed: int, generators: GeneratorSpec = DEFAULT_MATH_GENERATORS) -> list[dict]:
    """Math word and arithmetic problems; meta = {"answer": numeric gold as str, "generator": name}.

    `generators` also takes per-generator settings (GeneratorSpec), for an easier curriculum than the
    eval set's defaults:
    `'+domain.prompt_source.kwargs.generators={basic_arithmetic: {max_terms: 2, max_digits: 2}}'`.
    Questions of the eval pools (see math_eval_set, math_arith_eval_set) are dropped, so train and
    eval are disjoint.

    Raises:
        ValueError: an unknown generator or setting, one with non-numeric answers, or fewer than n prompts.
    """
    _check_n(n, "math_reasoning_gym")
    exclude = frozenset(question for question, _, _ in (*_math_eval_pool(), *_math_arith_pool()))
    return _take(_math_rows(_math_items(n, seed, generators, exclude)), n, "math_reasoning_gym")


# ---------------------------------------------------------------------------------------------
# Code: function-writing tasks with unit tests and a reference solution each
# (skillweave/domains/code/tasks.jsonl, written by build_tasks.py next to it)


CODE_EVAL_POOL = sum(task["split"] == "eval" for task in load_tasks())
"""skillweave_codetasks holds out the tasks.jsonl rows whose split is "eval"; the training source has
the rest. The split is by task, so most held-out tasks have family siblings (the same function with
another constant) in training: a held-out set at the training level."""


def _code_rows(split: str) -> list[dict]:
    tasks = [t for t in load_tasks() if t["split"] == split]
    return [_row(t["prompt"], {"entry_point": t["entry_point"], "tests": t["tests"]}) for t in tasks]


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


@PROMPT_SOURCES.register("code_tasks")
def code_tasks(n: int, seed: int) -> list[dict]:
    """Function-writing tasks, the skillweave_codetasks pool excluded: the "train" rows of tasks.jsonl
    in a seeded order; meta = {"entry_point": name, "tests": assert lines}.

    Raises:
        ValueError: n exceeds the number of training tasks.
    """
    _check_n(n, "code_tasks")
    rows = _code_rows("train")
    random.Random(seed).shuffle(rows)
    return _take(rows, n, "code_tasks")


# ---------------------------------------------------------------------------------------------
# Instruction following: IFEval-style prompts checked by lm-eval's IFEval checkers

IFEVAL_TOPICS = (
    "the history of the bicycle", "how bees make honey", "why sleep matters", "a rainy day in a big city",
    "learning a second language", "starting a vegetable garden", "the life of a lighthouse keeper",
    "the invention of the printing press", "why people love dogs", "a trip to the mountains", "the water cycle",
    "how volcanoes form", "the importance of recycling", "a day at the beach", "the first moon landing",
    "how computers store information", "cooking at home", "a small bakery in Paris", "the rules of chess",
    "how trains changed travel", "why the sky is blue", "the life cycle of a butterfly",
    "a study app for students", "walking every day", "a robot who learns to paint", "the history of coffee",
    "preparing for a job interview", "the solar system", "a friendship between a cat and a crow",
    "the future of electric cars",
)
IFEVAL_TASKS = (
    "Write a short blog post about {topic}.", "Write a letter to a friend about {topic}.",
    "Write a short story about {topic}.", "Write a short essay about {topic}.",
    "Explain {topic} to a ten-year-old.", "Write a speech about {topic}.", "Write a poem about {topic}.",
)
_KEYWORDS = ("energy", "journey", "simple", "future", "balance", "bright", "history", "nature", "community",
             "curious", "window", "morning", "garden", "river", "patience", "signal", "market", "silver")
_FORBIDDEN = ("very", "really", "thing", "good", "important", "many", "also", "just")
_FIRST_WORDS = ("today", "first", "however", "finally", "imagine", "yesterday", "sometimes")
_END_PHRASES = ("Any other questions?", "Is there anything else I can help with?", "Let me know what you think.",
                "That is all for today.")
_RELATIONS = ("less than", "at least")


def _ifeval_kwargs(instruction_id: str, rng: random.Random) -> dict:
    """Random kwargs for one instruction, as lm-eval's `build_description` takes them. No value is
    falsy: lm-eval's scoring drops falsy kwargs and would then draw random ones."""
    relation = rng.choice(_RELATIONS)
    if instruction_id == "length_constraints:nth_paragraph_first_word":
        paragraphs = rng.randint(2, 4)
        return {"num_paragraphs": paragraphs, "nth_paragraph": rng.randint(1, paragraphs),
                "first_word": rng.choice(_FIRST_WORDS)}
    draw = {
        "keywords:existence": lambda: {"keywords": rng.sample(_KEYWORDS, 2)},
        "keywords:frequency": lambda: {"keyword": rng.choice(_KEYWORDS), "frequency": rng.randint(2, 4),
                                       "relation": relation},
        "keywords:forbidden_words": lambda: {"forbidden_words": rng.sample(_FORBIDDEN, 2)},
        "keywords:letter_frequency": lambda: {"letter": rng.choice("abcdefghilmnoprstuw"),
                                              "let_frequency": rng.randint(3, 10), "let_relation": relation},
        "length_constraints:number_words": lambda: {"num_words": rng.randrange(50, 301, 25), "relation": relation},
        "length_constraints:number_sentences": lambda: {"num_sentences": rng.randint(2, 10), "relation": relation},
        "length_constraints:number_paragraphs": lambda: {"num_paragraphs": rng.randint(2, 5)},
        "detectable_content:number_placeholders": lambda: {"num_placeholders": rng.randint(1, 4)},
        "detectable_content:postscript": lambda: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))},
        "detectable_format:number_bullet_lists": lambda: {"num_bullets": rng.randint(2, 5)},
        "detectable_format:number_highlighted_sections": lambda: {"num_highlights": rng.randint(1, 4)},
        "detectable_format:multiple_sections": lambda: {"section_spliter": rng.choice(("Section", "SECTION")),
                                                        "num_sections": rng.randint(2, 5)},
        "startend:end_checker": lambda: {"end_phrase": rng.choice(_END_PHRASES)},
        "change_case:capital_word_frequency": lambda: {"capital_frequency": rng.randint(2, 6),
                                                       "capital_relation": relation},
    }
    return draw[instruction_id]() if instruction_id in draw else {}


IFEVAL_INSTRUCTIONS = (
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "length_constraints:number_words", "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:nth_paragraph_first_word", "detectable_content:number_placeholders",
    "detectable_content:postscript", "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title", "combination:two_responses",
    "startend:end_checker", "startend:quotation", "change_case:english_lowercase", "change_case:english_capital",
    "change_case:capital_word_frequency", "punctuation:no_comma",
)
"""The instruction types used: those lm-eval checks from the response alone (no language detection,
no prompt repetition, no fixed yes/no answers)."""
# "Section 1" splitters are case-sensitive, so they cannot be all-lowercase or all-capital.
_EXTRA_CONFLICTS = {
    "detectable_format:multiple_sections": {"change_case:english_lowercase", "change_case:english_capital"},
}


@cache
def _ifeval_registry():
    """lm-eval's IFEval instruction registry, imported once punkt_tab is in place."""
    from skillweave.rules.instructions import ensure_punkt_tab

    ensure_punkt_tab()
    from lm_eval.tasks.ifeval import instructions_registry

    return instructions_registry


@cache
def _ifeval_conflicts() -> dict[str, frozenset[str]]:
    registry = _ifeval_registry()
    conflicts = {k: set(v) for k, v in registry.INSTRUCTION_CONFLICTS.items()}
    for a, others in _EXTRA_CONFLICTS.items():
        conflicts[a] |= others
    conflicts = registry.conflict_make(conflicts)  # symmetric, and each conflicts with itself
    return {k: frozenset(v) for k, v in conflicts.items()}


@PROMPT_SOURCES.register("ifeval_synthetic")
def ifeval_synthetic(n: int, seed: int, max_instructions: int = 3) -> list[dict]:
    """Topic x task x 1..max_instructions non-conflicting IFEval instructions with random kwargs,
    rendered as IFEval does (the task, then each checker's own description);
    meta = {"instruction_id_list": [...], "kwargs": [{...}, ...]} as in IFEval rows.

    Raises:
        ValueError: max_instructions < 1, or fewer than n distinct prompts after 50 * n draws.
    """
    _check_n(n, "ifeval_synthetic")
    if max_instructions < 1:
        raise ValueError(f"ifeval_synthetic: max_instructions must be >= 1, got {max_instructions}")
    checkers, conflicts = _ifeval_registry().INSTRUCTION_DICT, _ifeval_conflicts()
    rng = random.Random(seed)
    rows, seen = [], set()
    for _ in range(50 * n):
        if len(rows) == n:
            break
        ids: list[str] = []
        for _ in range(rng.randint(1, max_instructions)):
            allowed = [i for i in IFEVAL_INSTRUCTIONS if not any(i in conflicts[c] for c in ids)]
            if allowed:
                ids.append(rng.choice(allowed))
        kwargs = [_ifeval_kwargs(i, rng) for i in ids]
        task = rng.choice(IFEVAL_TASKS).format(topic=rng.choice(IFEVAL_TOPICS))
        descriptions = [checkers[i](i).build_description(**kw) for i, kw in zip(ids, kwargs, strict=True)]
        prompt = " ".join([task, *descriptions])
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append(_row(prompt, {"instruction_id_list": ids, "kwargs": kwargs}))
    return _take(rows, n, "ifeval_synthetic")


# ---------------------------------------------------------------------------------------------
# Dialogue: open requests, written here rather than taken from a dataset (AlpacaEval is the eval set)

DIALOGUE_TOPICS = (
    "learning to play the guitar", "budgeting on a small income", "caring for houseplants",
    "planning a week-long trip to Japan", "training for a first 10k run", "writing a cover letter",
    "keeping a sourdough starter alive", "choosing a first programming language", "reducing food waste at home",
    "preparing for a job interview", "saving for retirement", "sleeping better", "learning a language as an adult",
    "making friends in a new city", "hosting a dinner party", "starting a podcast", "composting in an apartment",
    "teaching a child to ride a bike", "negotiating a salary", "writing a short story", "studying for exams",
    "running effective meetings", "photographing the night sky", "buying a used car", "brewing coffee at home",
    "getting started with birdwatching", "decorating a small apartment", "staying focused while working from home",
    "giving a wedding toast", "training a puppy",
)
"""Gerund phrases, so every topic reads naturally in every template."""
DIALOGUE_TEMPLATES = (
    "What are the most important things to know about {topic}?", "Can you give me some practical tips for {topic}?",
    "I'm new to {topic}. Where should I start?", "What are common mistakes people make when {topic}?",
    "Explain the basics of {topic} in simple terms.", "Write a short step-by-step guide to {topic}.",
    "My friend is struggling with {topic}. What advice would you give them?",
    "Give me a one-week plan for {topic}.", "What tools or resources would help with {topic}?",
    "Why do so many people find {topic} difficult, and how can they make it easier?",
    "Compare two different approaches to {topic}.", "Summarize the key ideas behind {topic} for a busy reader.",
)
DIALOGUE_STYLES = (
    "", " Please keep it short.", " Use a numbered list.", " Explain it as you would to a friend.",
    " Answer in two or three paragraphs.",
)


@PROMPT_SOURCES.register("dialogue_requests")
def dialogue_requests(n: int, seed: int) -> list[dict]:
    """Open requests: a seeded draw without repeats from topic x template x style;
    meta = {"topic": the topic} (the dialogue rules need nothing else).

    Raises:
        ValueError: n exceeds the number of combinations.
    """
    _check_n(n, "dialogue_requests")
    combos = list(itertools.product(DIALOGUE_TOPICS, DIALOGUE_TEMPLATES, DIALOGUE_STYLES))
    random.Random(seed).shuffle(combos)
    rows = [_row(template.format(topic=topic) + style, {"topic": topic}) for topic, template, style in combos[:n]]
    return _take(rows, n, "dialogue_requests")
