"""Evaluate an in-memory model on skillweave's lm-eval tasks (the domains' EvalTasks, skillweave/eval_tasks.py).

The tasks are ordinary lm-eval 0.4.13 YAMLs over data found in installed packages, so the same
numbers come from plain `lm_eval --include_path skillweave/domains` (see `skillweave/domains/__init__.py`).
`skillweave_humaneval` and `skillweave_codetasks` execute model-written code (in `skillweave.sandbox`);
lm-eval refuses such a task unless the run confirms it, and asking `evaluate()` for it is that confirmation.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from . import decoding, eval_lms
from .eval_tasks import EVAL_TASKS, include_paths

log = logging.getLogger(__name__)

_FILTER = "none"  # lm-eval keys metrics as "<metric>,<filter>"; these tasks define no filters


def seeded_subset(n_docs: int, limit: int, seed: int) -> list[int]:
    """`limit` doc indices drawn without replacement by `seed`, sorted (lm-eval iterates docs in order
    and maps results back by position in this list)."""
    return sorted(random.Random(seed).sample(range(n_docs), min(limit, n_docs)))


def evaluate(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    *,
    limit: int | None,
    max_gen_toks: int = 256,
    batch_size: int = 8,
    seed: int = 1234,
    apply_chat_template: bool = True,
    doc_ids: dict[str, list[int]] | None = None,
    compiled_decode: str = "off",
    engine: Any = None,
) -> dict[str, dict]:
    """Greedy generation + scoring of `model` on `tasks` with lm-eval.

    Args:
        model: a transformers causal LM in memory (modules swapped in place are seen).
        tokenizer: its tokenizer; the chat template is applied when it has one (instruct models).
        tasks: registered eval task names (EVAL_TASKS).
        limit: evaluate a seeded random subset of this many docs per task (the same subset for the
            same seed); None = all docs.
        max_gen_toks: generation budget per answer, overriding the YAMLs' defaults.
        apply_chat_template: False, or a tokenizer without a chat template, sends the plain prompt.
        doc_ids: {task: doc indices} evaluates exactly those docs of a task instead of its seeded
            subset (routed evaluation sends each skillpack the docs routed to it); other tasks keep `limit`.
        compiled_decode: model.compiled_decode (auto | on | off); `auto` counts the decode steps of the
            docs asked for (batches x max_gen_toks, skillweave.decoding.use_compiled_decode).
        engine: a skillweave.engines.VLLMEngine serving the model instead (`model` is then None): lm-eval
            gets this process's completions (`eval_lms.engine_lm`), with the tokenizer's chat template and stops.

    Returns:
        {task: {"metric", "score", "stderr" (nan for a single doc), "n",
                "samples": [{"doc_id", "id", "prompt", "response", "score", optional "also": {metric: value}}]}}

    Raises:
        ValueError: an unknown task name, a limit below 1, or doc_ids naming a task not asked for, no
            doc, a repeated doc or one out of range.
    """
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown or no skillweave tasks {unknown}; valid: {', '.join(EVAL_TASKS.names())}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: give a number of docs >= 1, or None for all")
    doc_ids = doc_ids or {}
    for task, ids in doc_ids.items():
        if task not in tasks:
            raise ValueError(f"doc_ids names {task}, which is not among the tasks {list(tasks)}")
        # lm-eval reads an empty list as "every doc"
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"doc_ids[{task!r}] must be distinct doc indices >= 0, at least one; got {ids}")
    if apply_chat_template and getattr(tokenizer, "chat_template", None) is None:
        log.warning("the tokenizer has no chat template: evaluating with plain prompts")
        apply_chat_template = False

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_paths(list(tasks)), include_defaults=False)
    loaded = manager.load(list(tasks))["tasks"]
    samples = {} if limit is None else {name: seeded_subset(len(task.eval_docs), limit, seed) for name, task in loaded.items()}
    for name, ids in doc_ids.items():
        if max(ids) >= len(loaded[name].eval_docs):
            raise ValueError(f"doc_ids[{name!r}] has {max(ids)}; the task has {len(loaded[name].eval_docs)} docs")
        samples[name] = sorted(ids)  # lm-eval maps results back by position in this list, in doc order
    n_docs = [len(samples[name]) if name in samples else len(task.eval_docs) for name, task in loaded.items()]
    steps = sum(math.ceil(n / batch_size) for n in n_docs) * max_gen_toks
    if engine is not None:
        lm = eval_lms.engine_lm(engine, tokenizer)
    else:
        compiled = decoding.use_compiled_decode(compiled_decode, model.device, steps)
        lm = (eval_lms.compiled_hflm() if compiled else HFLM)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(loaded.values()),
        task_manager=manager,
        samples=samples or None,  # a task missing from it is evaluated on every doc
        gen_kwargs={"max_gen_toks": max_gen_toks},
        apply_chat_template=apply_chat_template,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        log_samples=True,
        confirm_run_unsafe_code=True,
    )
    return {name: _task_result(name, out) for name in tasks}


def eval_prompts(task: str, *, limit: int | None, seed: int = 1234) -> list[tuple[int, str]]:
    """(doc_id, prompt text) of the docs `evaluate(..., limit=limit, seed=seed)` scores for `task`, in order.

    The text is lm-eval's `doc_to_text` of each doc, the user message before any chat template: what a
    router sees of a request.

    Raises:
        ValueError: an unknown task or a limit below 1.
    """
    if task not in EVAL_TASKS:
        raise ValueError(f"unknown skillweave task {task!r}; valid: {', '.join(EVAL_TASKS.names())}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: give a number of docs >= 1, or None for all")
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_path=include_paths([task]), include_defaults=False).load([task])["tasks"][task]
    docs = loaded.eval_docs
    ids = range(len(docs)) if limit is None else seeded_subset(len(docs), limit, seed)
    return [(i, loaded.doc_to_text(docs[i])) for i in ids]


def _task_result(name: str, out: dict) -> dict:
    metric = EVAL_TASKS.get(name).primary_metric
    scores = out["results"][name]
    stderr = scores[f"{metric}_stderr,{_FILTER}"]
    others = EVAL_TASKS.get(name).also_kept
    rows = [
        {
            "doc_id": s["doc_id"],
            "id": s["doc"]["id"],
            "prompt": s["arguments"][0][0],
            "response": s["filtered_resps"][0],
            "score": float(s[metric]),
            **({"also": {m: float(s[m]) for m in others}} if others else {}),
        }
        for s in out["samples"][name]
    ]
    return {
        "metric": metric,
        "score": float(scores[f"{metric},{_FILTER}"]),
        "stderr": math.nan if stderr == "N/A" else float(stderr),
        "n": len(rows),
        "samples": rows,
    }


def paired_difference(before: list[float], after: list[float]) -> tuple[float, float]:
    """Mean of after - before over the same items, and its standard error (sample std / sqrt n; nan
    for one item). Far tighter than the two means' own stderrs combined when most items agree."""
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    if not diffs:
        raise ValueError("paired_difference needs at least one item")
    n, mean = len(diffs), sum(diffs) / len(diffs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1)) if n > 1 else math.nan
    return mean, sd / math.sqrt(n)

