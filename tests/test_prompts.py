"""Prompt sources: deterministic per seed, distinct, disjoint from eval, and scorable by their rules."""

from __future__ import annotations

import json
import logging
import re
from fractions import Fraction

import pytest

from skillweave.domains.code.source import CODE_EVAL_POOL, code_eval_set
from skillweave.domains.math.source import (
    MATH_ARITH_GENERATORS,
    MATH_ARITH_POOL,
    MATH_EVAL_POOL,
    MATH_EVAL_SEED,
    MATH_INSTRUCTION,
    expression_value,
    math_arith_eval_set,
    math_eval_set,
)
from skillweave.prompts import PROMPT_SOURCES, TEMPLATE_DRAW, SourceExhausted, prompt_id, template_draw
from skillweave.domains.code.tasks import TASKS_FILE, load_tasks, read_tasks, tasks_digest
from skillweave.rules import RULES
from skillweave.sandbox import run_python

SOURCES = [("math_reasoning_gym", 60), ("code_tasks", 30), ("ifeval_synthetic", 60)]


def test_registry_holds_every_source():
    # a subset: other tests register sources of their own in the same session
    assert {"code_tasks", "ifeval_synthetic", "math_reasoning_gym"} <= set(PROMPT_SOURCES.names())


@pytest.mark.parametrize("source, n", SOURCES)
def test_sources_are_deterministic_distinct_and_well_formed(source, n):
    fn = PROMPT_SOURCES.get(source)
    rows = fn(n, seed=1)
    assert rows == fn(n, seed=1)
    assert [r["id"] for r in rows] != [r["id"] for r in fn(n, seed=2)]
    assert len({r["prompt"] for r in rows}) == len({r["id"] for r in rows}) == n
    for row in rows:
        assert set(row) == {"id", "prompt", "meta"}
        assert row["id"] == prompt_id(row["prompt"])
        json.dumps(row)  # rows are written as JSONL


@pytest.mark.parametrize("source, n", [*SOURCES, ("dialogue_requests", 60)])
def test_sources_are_prefix_stable(source, n):
    """Online DPO round r takes rows r*n .. (r+1)*n - 1 of one seeded draw (skillweave/stages/generate.py)."""
    fn = PROMPT_SOURCES.get(source)
    assert fn(2 * n, seed=4)[:n] == fn(n, seed=4)


@pytest.mark.parametrize(
    "source, n, kwargs, match",
    [
        ("code_tasks", 10_000, {}, "could produce only"),
        ("code_tasks", 0, {}, "n must be positive"),
        ("math_reasoning_gym", 5, {"generators": ["basic_arithmetc"]}, "not registered"),
        # answers like "Friday" cannot be checked numerically
        ("math_reasoning_gym", 5, {"generators": ["calendar_arithmetic"]}, "non-numeric answer"),
        ("math_reasoning_gym", 5, {"generators": {"chain_sum": {"max_digitz": 2}}}, "rejects the settings"),
        ("math_reasoning_gym", 5, {"generators": {"chain_sum": {"min_terms": 3, "max_terms": 2}}}, "rejects the settings"),
        ("math_reasoning_gym", 5, {"generators": {"chain_sum": {"seed": 1}}}, "set by skillweave"),
        ("math_reasoning_gym", 5, {"generators": "chain_sum"}, "list of names or a mapping"),
        ("ifeval_synthetic", 5, {"max_instructions": 0}, "max_instructions"),
    ],
)
def test_sources_refuse_what_they_cannot_do(source, n, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PROMPT_SOURCES.get(source)(n, seed=0, **kwargs)


def test_math_train_and_eval_are_disjoint():
    eval_prompts = {r["prompt"] for r in math_eval_set(MATH_EVAL_POOL)}
    # the eval seed itself would reproduce the eval questions if they were not excluded
    for seed in (MATH_EVAL_SEED, 0):
        train = PROMPT_SOURCES.get("math_reasoning_gym")(500, seed=seed)
        assert not eval_prompts & {r["prompt"] for r in train}
    assert math_eval_set(20) == math_eval_set(200)[:20]  # a prefix of one fixed pool


def test_math_train_and_arith_eval_are_disjoint():
    """Easy arithmetic repeats questions ("2 + 2 =") across seeds: the arith eval pool's own
    questions turn up in a training draw of its level unless they are excluded."""
    from skillweave.domains.math.source import _math_items

    pool = {r["prompt"] for r in math_arith_eval_set(MATH_ARITH_POOL)}
    assert len(pool) == MATH_ARITH_POOL
    unexcluded = {f"{q}\n\n{MATH_INSTRUCTION}" for q, _, _ in _math_items(128, 0, MATH_ARITH_GENERATORS, frozenset())}
    assert len(unexcluded & pool) >= 3
    train = PROMPT_SOURCES.get("math_reasoning_gym")(128, seed=0, generators=MATH_ARITH_GENERATORS)
    assert not pool & {r["prompt"] for r in train}
    assert {r["meta"]["generator"] for r in math_arith_eval_set(10)} == {"basic_arithmetic", "chain_sum"}
    with pytest.raises(ValueError, match="n must be in 1..1000"):
        math_arith_eval_set(MATH_ARITH_POOL + 1)


@pytest.mark.parametrize(
    "expression, value",
    [
        ("89 - 19 * 4", Fraction(13)),  # precedence, not left to right
        ("4 / 4", Fraction(1)),
        ("30 / 91", Fraction(30, 91)),  # true division, exact
        ("(2 + 3) * -4", Fraction(-20)),
        ("2 - -1", Fraction(3)),
        ("6 - 2 / 0", None),  # divides by zero
    ],
)
def test_expression_value_is_exact(expression, value):
    assert expression_value(expression) == value


@pytest.mark.parametrize("expression", ["2 ** 3", "1.5 + 1", "__import__('os')", "x + 1", "1 +"])
def test_expression_value_rejects_anything_else(expression):
    with pytest.raises(ValueError, match="not an arithmetic expression of integers"):
        expression_value(expression)


def test_wrong_reference_answers_are_dropped(caplog):
    """reasoning-gym 0.1.25's basic_arithmetic without parentheses gives wrong answers to two in five of
    its items (`Calculate 4 / 4.` -> 2): they are dropped and counted, and the mix stays balanced."""
    import reasoning_gym

    raw = reasoning_gym.create_dataset("basic_arithmetic", size=200, seed=5, allow_parentheses=False, max_terms=3)
    assert sum(expression_value(d["metadata"]["expression"]) != Fraction(d["answer"]) for d in raw) > 20
    with caplog.at_level(logging.WARNING, logger="skillweave.prompts"):
        rows = PROMPT_SOURCES.get("math_reasoning_gym")(
            100, seed=5, generators={"basic_arithmetic": {"allow_parentheses": False, "max_terms": 3}, "chain_sum": {}}
        )
    assert "(seed 5): dropped {'basic_arithmetic':" in caplog.text
    generators = [r["meta"]["generator"] for r in rows]
    # a wrong answer passes the turn to the generator's next item (repeated questions still skip it)
    assert abs(generators.count("basic_arithmetic") - generators.count("chain_sum")) <= 10
    for row in rows:
        expression = re.fullmatch(r"Calculate (.*)\.|.*problem: (.*) =", row["prompt"].split("\n")[0])
        assert expression_value(expression.group(1) or expression.group(2)) == Fraction(row["meta"]["answer"])


def test_math_rows_are_scorable_and_balanced():
    rows = PROMPT_SOURCES.get("math_reasoning_gym")(70, seed=3)
    rule = RULES.get("final_number_matches")()
    for row in rows:
        answer = row["meta"]["answer"]
        assert row["prompt"].endswith("Give the final answer as a number on the last line.")
        assert rule({"prompt": row["prompt"], "response": f"The answer is {answer}.", "meta": row["meta"]}).passed
    generators = [row["meta"]["generator"] for row in rows]
    assert all(generators.count(g) == 10 for g in set(generators)) and len(set(generators)) == 7


def test_math_generator_settings_make_a_curriculum():
    """Per-generator settings reach reasoning-gym: two-term, one-digit sums only; a name list and a
    mapping without settings give the same rows."""
    source = PROMPT_SOURCES.get("math_reasoning_gym")
    easy = source(20, seed=1, generators={"chain_sum": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}})
    for row in easy:
        question = row["prompt"].split("\n")[0]
        a, op, b = re.fullmatch(r".*: (\d) ([+-]) (\d) =", question).groups()
        assert int(row["meta"]["answer"]) == int(a) + (int(b) if op == "+" else -int(b))
    assert source(10, seed=1, generators=["chain_sum"]) == source(10, seed=1, generators={"chain_sum": None})


def test_code_tasks_references_pass_and_tests_discriminate():
    """Every reference passes its tests, a do-nothing solution fails at least one, and no two tasks with
    the same function name (a family's members) accept each other's reference: >= 300 distinct tasks in
    behaviour, not only in wording. All of it runs in one sandbox call, over the rows of tasks.jsonl."""
    tasks = load_tasks()
    assert len(tasks) >= 300
    assert len({t["prompt"] for t in tasks}) == len(tasks)
    assert len({(t["entry_point"], t["tests"]) for t in tasks}) == len(tasks)
    cases = [(t["entry_point"], t["reference"], t["tests"]) for t in tasks]
    script = (
        f"cases = {cases!r}\n"
        "def passes(source, tests):\n"
        "    namespace = {}\n"
        "    exec(source, namespace)\n"
        "    try:\n"
        "        exec(tests, namespace)\n"
        "    except AssertionError:\n"
        "        return False\n"
        "    return True\n"
        "pairs = 0\n"
        "for i, (entry_point, reference, tests) in enumerate(cases):\n"
        "    if not passes(reference, tests):\n"
        "        print('REFERENCE FAILS', i, entry_point)\n"
        "    if passes(f'def {entry_point}(*args):\\n    return None', tests):\n"
        "        print('TESTS ACCEPT A STUB', i, entry_point)\n"
        "    for j, (other_entry, other_reference, _) in enumerate(cases):\n"
        "        if j != i and other_entry == entry_point:\n"
        "            pairs += 1\n"
        "            if passes(other_reference, tests):\n"
        "                print('TESTS ACCEPT A SIBLING', i, j, entry_point)\n"
        "print('checked', len(cases), pairs > 0)\n"
    )
    result = run_python(script, timeout_s=60)
    assert result.ok, result.reason
    assert result.stdout == f"checked {len(tasks)} True\n"


TRAINING_CODE_TASKS = len(load_tasks()) - CODE_EVAL_POOL
TASK_FIELDS = {"task_id", "prompt", "tests", "entry_point", "reference", "split"}


def test_code_split_is_stored_in_the_tasks_file():
    """tasks.jsonl holds its split: 120 eval rows, which code_eval_set returns in file order."""
    tasks = load_tasks()
    assert all(t.keys() == TASK_FIELDS and t["split"] in ("train", "eval") for t in tasks)
    assert len({t["task_id"] for t in tasks}) == len(tasks)
    held_out = [t for t in tasks if t["split"] == "eval"]
    assert len(held_out) == CODE_EVAL_POOL == 120
    assert [r["prompt"] for r in code_eval_set()] == [t["prompt"] for t in held_out]


def test_build_tasks_reproduces_the_tasks_file(tmp_path):
    """The build script over today's table rewrites tasks.jsonl byte for byte (the file is up to date)."""
    from skillweave.domains.code.build_tasks import build

    build(out=tmp_path / "tasks.jsonl")
    assert (tmp_path / "tasks.jsonl").read_bytes() == TASKS_FILE.read_bytes()


def test_appending_a_code_task_keeps_every_stored_split(tmp_path):
    """A new task goes to train and changes the digest (the source's version); no stored split moves."""
    from skillweave.domains.code.build_tasks import CodeTask, build, task_table

    new = CodeTask("triple", "x", "returns `x` times three", "def triple(x):\n    return 3 * x\n",
                   (((2,), 6), ((0,), 0)))
    out = tmp_path / "tasks.jsonl"
    build(out=out, tasks=task_table() + (new,))
    *kept, added = read_tasks(out)
    assert kept == list(load_tasks())
    assert added["entry_point"] == "triple" and added["split"] == "train"
    assert tasks_digest(out) != tasks_digest()


def test_code_eval_pool_is_held_out_of_training():
    """skillweave_codetasks' tasks and the training source split the file: disjoint, together all of it."""
    held_out = code_eval_set()
    training = PROMPT_SOURCES.get("code_tasks")(TRAINING_CODE_TASKS, seed=3)
    assert len(held_out) == CODE_EVAL_POOL == 120 and held_out == code_eval_set()
    assert {r["prompt"] for r in held_out}.isdisjoint(r["prompt"] for r in training)
    assert {r["prompt"] for r in held_out} | {r["prompt"] for r in training} == {t["prompt"] for t in load_tasks()}


def test_code_reference_answers_are_the_task_references_in_a_block():
    """REFERENCE_ANSWERS["code_tasks"] (filter.strategy=reference_vs_fail) answers each task with its
    reference as a bare ```python block, and nothing else."""
    from skillweave.prompts import REFERENCE_ANSWERS

    answer = REFERENCE_ANSWERS.get("code_tasks")
    by_prompt = {t["prompt"]: t for t in load_tasks()}
    for row in PROMPT_SOURCES.get("code_tasks")(8, seed=1):
        assert answer(row["prompt"]) == "```python\n" + by_prompt[row["prompt"]]["reference"] + "```"
    assert answer("Write a Python function that does something else.") is None
    assert REFERENCE_ANSWERS.names() == ["code_tasks"]


def test_code_tasks_survive_the_contamination_check():
    """No training task overlaps HumanEval. Read against the source's template (template_draw), the
    13-gram check drops only a few family siblings of skillweave_codetasks tasks (the same function,
    another constant, where the family has no second training task to show its wording is template),
    from the whole source and from a small slice alike; without the template draw a 12-prompt slice
    (the quickstart's) would lose most of its prompts."""
    from skillweave.contamination import check_prompts

    held_out_functions = {r["meta"]["entry_point"] for r in code_eval_set()}
    source = PROMPT_SOURCES.get("code_tasks")
    everything = source(TRAINING_CODE_TASKS, seed=0)
    basis = template_draw("code_tasks", 0, {})
    assert basis == everything  # the whole of a source smaller than TEMPLATE_DRAW
    for rows in (everything, everything[:64], everything[:12]):
        kept, report = check_prompts(rows, n=13, template_prompts=basis)
        assert report["per_eval_set"]["skillweave_humaneval"]["train_prompts_hit"] == 0
        assert {row["meta"]["entry_point"] for row in rows if row not in kept} <= held_out_functions
        assert len(rows) - len(kept) < 0.05 * len(rows) + 1
    assert len(check_prompts(everything[:12], n=13)[0]) < 6


def test_template_draw_is_a_prefix_of_the_source():
    rows = template_draw("dialogue_requests", 3, {})
    assert len(rows) == TEMPLATE_DRAW and rows[:10] == PROMPT_SOURCES.get("dialogue_requests")(10, seed=3)
    with pytest.raises(SourceExhausted, match=f"only {TRAINING_CODE_TASKS} distinct prompts") as exhausted:
        PROMPT_SOURCES.get("code_tasks")(TRAINING_CODE_TASKS + 1, seed=0)
    assert exhausted.value.available == TRAINING_CODE_TASKS and isinstance(exhausted.value, ValueError)


def test_code_rows_match_the_tasks_file():
    rows = PROMPT_SOURCES.get("code_tasks")(TRAINING_CODE_TASKS, seed=0) + code_eval_set()
    by_prompt = {t["prompt"]: t for t in load_tasks()}
    for row in rows:
        task = by_prompt[row["prompt"]]
        assert row["meta"] == {"entry_point": task["entry_point"], "tests": task["tests"]}
        assert row["prompt"].startswith(f"Write a Python function `{task['entry_point']}(")


def test_ifeval_rows_are_scorable():
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    rows = PROMPT_SOURCES.get("ifeval_synthetic")(200, seed=5)
    rule = RULES.get("ifeval_instructions")()
    used = set()
    for row in rows:
        meta = row["meta"]
        assert 1 <= len(meta["instruction_id_list"]) == len(meta["kwargs"]) <= 3
        assert len(set(meta["instruction_id_list"])) == len(meta["instruction_id_list"])
        used.update(meta["instruction_id_list"])
        for kwargs in meta["kwargs"]:
            assert all(kwargs.values())  # lm-eval drops falsy kwargs and would draw random ones
        result = rule({"prompt": row["prompt"], "response": "A short answer about the topic.", "meta": meta})
        assert 0.0 <= result.score <= 1.0
    assert used <= set(INSTRUCTION_DICT) and len(used) >= 20


def test_ifeval_prompt_states_its_instructions():
    row = PROMPT_SOURCES.get("ifeval_synthetic")(1, seed=0)[0]
    assert row["prompt"].startswith("Write") or row["prompt"].startswith("Explain")
    rule = RULES.get("ifeval_instructions")()
    # a response that follows nothing cannot pass
    assert not rule({"prompt": row["prompt"], "response": "", "meta": row["meta"]}).passed


def test_the_math_online_recipe_draws_its_easy_arithmetic():
    """recipes/math_online.yaml reaches the prompt source: expressions of 2-3 non-negative terms
    of at most two digits, basic_arithmetic and chain_sum only (experiments/math_gain/online)."""
    from compose import compose_config, hydra_context

    with hydra_context():
        cfg = compose_config(["recipe=math_online", "domain=math"])
    source = cfg.domain.prompt_source
    # the level of its held-out set, skillweave_arith
    assert source.kwargs["generators"] == MATH_ARITH_GENERATORS and cfg.domain.eval_task == "skillweave_arith"
    rows = PROMPT_SOURCES.get(source.name)(40, seed=0, **source.kwargs)
    assert {r["meta"]["generator"] for r in rows} == {"basic_arithmetic", "chain_sum"}
    for row in rows:
        numbers = re.findall(r"-?\d+", row["prompt"].split("\n")[0])
        assert 2 <= len(numbers) <= 3 and all(0 <= int(x) < 100 for x in numbers), row["prompt"]


def test_the_code_heldout_recipe_trains_beside_its_held_out_set():
    """recipes/code_heldout.yaml: the domain is scored on skillweave_codetasks and draws at most the
    tasks left for training."""
    from compose import compose_config, hydra_context

    with hydra_context():
        cfg = compose_config(["recipe=code_heldout", "domain=code"])
    assert cfg.domain.eval_task == "skillweave_codetasks" and cfg.domain.prompt_source.name == "code_tasks"
    assert cfg.domain.sampling.num_prompts <= TRAINING_CODE_TASKS and cfg.dev.prompts == TRAINING_CODE_TASKS
