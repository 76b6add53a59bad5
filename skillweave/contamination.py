"""Word n-gram overlap between training prompts and the evaluation sets (a contamination check).

A training prompt is contaminated when it shares one word n-gram with an eval text (GPT-3's 13-gram
test); an eval text shorter than n words counts when it occurs whole in the prompt, or short
AlpacaEval requests could never match. Words are lowercased runs of letters and digits, so case,
whitespace and punctuation do not hide an overlap.
"""

from __future__ import annotations

import functools
import re

_WORD = re.compile(r"[^\W_]+")
MAX_EXAMPLES = 10
"""Matches quoted in a report."""
TEMPLATE_GRAM = 6
"""Words in a 6-gram shared by several training prompts are template wording (instructions appended
to every prompt are often shorter than the 13 words of the contamination test)."""


def normalised_words(text: str) -> tuple[str, ...]:
    """The words of `text`, lowercased, without punctuation.

    >>> normalised_words("Hello,  WORLD -- it's me!")
    ('hello', 'world', 'it', 's', 'me')
    """
    return tuple(_WORD.findall(text.lower()))


def _grams(words: tuple[str, ...], size: int) -> list[tuple[str, ...]]:
    return [words[i : i + size] for i in range(len(words) - size + 1)]


def _index(eval_texts: dict[str, list[str]], n: int) -> dict[tuple[str, ...], tuple[str, int]]:
    """Every eval n-gram (or whole text shorter than n words) -> (eval set, text index) of its first occurrence."""
    index: dict[tuple[str, ...], tuple[str, int]] = {}
    for name, texts in eval_texts.items():
        for j, text in enumerate(texts):
            words = normalised_words(text)
            grams = _grams(words, n) if len(words) >= n else [words]
            for gram in grams:
                if gram:
                    index.setdefault(gram, (name, j))
    return index


def template_grams(train_prompts: list[str], n: int, min_prompts: int) -> set[tuple[str, ...]]:
    """Word n-grams found in at least `min_prompts` distinct training prompts: a prompt source's
    template wording ("give the result as your final answer"), shared with eval sets built from the
    same generators or instruction types, is not a leaked eval item."""
    counts: dict[tuple[str, ...], int] = {}
    for prompt in train_prompts:
        for gram in set(_grams(normalised_words(prompt), n)):
            counts[gram] = counts.get(gram, 0) + 1
    return {gram for gram, c in counts.items() if c >= min_prompts}


def _matches(
    train_prompts: list[str], eval_texts: dict[str, list[str]], n: int, ignore: frozenset = frozenset()
) -> list[tuple[int, str, int, tuple[str, ...]]]:
    """(train index, eval set, eval index, shared gram) for every pair of a training prompt and an eval
    text it overlaps with, the first shared gram of each pair; grams touching a word covered by an
    `ignore` (template) n-gram do not count."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    index = _index(eval_texts, n)
    sizes = sorted({len(gram) for gram in index}, reverse=True)  # n, then the short texts' lengths
    found = []
    for i, prompt in enumerate(train_prompts):
        words, seen = normalised_words(prompt), set()
        # Words inside a template n-gram are the source's wording: a gram touching one does not count.
        template = [False] * len(words)
        for k, gram in enumerate(_grams(words, TEMPLATE_GRAM)):
            if gram in ignore:
                template[k : k + TEMPLATE_GRAM] = [True] * TEMPLATE_GRAM
        for size in sizes:
            for k, gram in enumerate(_grams(words, size)):
                hit = index.get(gram)
                if hit is not None and hit not in seen and not any(template[k : k + size]):
                    seen.add(hit)
                    found.append((i, *hit, gram))
    return found


def _report(matches: list, train_prompts: list[str], eval_texts: dict[str, list[str]], n: int) -> dict:
    per_set = {
        name: {
            "eval_texts": len(texts),
            "train_prompts_hit": len({i for i, s, _, _ in matches if s == name}),
            "eval_texts_hit": len({j for _, s, j, _ in matches if s == name}),
        }
        for name, texts in eval_texts.items()
    }
    examples = [
        {"train_index": i, "train_prompt": train_prompts[i], "eval_set": s, "eval_index": j, "ngram": " ".join(g)}
        for i, s, j, g in matches[:MAX_EXAMPLES]
    ]
    drop = sorted({i for i, _, _, _ in matches})
    return {"n": n, "train_prompts": len(train_prompts), "dropped": drop, "per_eval_set": per_set, "examples": examples}


def ngram_overlap_report(train_prompts: list[str], eval_texts: dict[str, list[str]], n: int = 13) -> dict:
    """How the training prompts overlap the eval sets.

    Args:
        train_prompts: the user messages of the training prompts.
        eval_texts: {eval set name: its prompts}.
        n: n-gram size in words.

    Returns:
        {"n", "train_prompts": count, "dropped": sorted indices of contaminated prompts,
         "per_eval_set": {name: {"eval_texts", "train_prompts_hit", "eval_texts_hit"}},
         "examples": up to MAX_EXAMPLES {"train_index", "train_prompt", "eval_set", "eval_index", "ngram"}}

    Raises:
        ValueError: n < 1.
    """
    return _report(_matches(train_prompts, eval_texts, n), train_prompts, eval_texts, n)


def contaminated_indices(train_prompts: list[str], eval_texts: dict[str, list[str]], n: int = 13) -> list[int]:
    """Sorted indices of the training prompts to drop: those sharing a word n-gram with any eval text."""
    return sorted({i for i, _, _, _ in _matches(train_prompts, eval_texts, n)})


def eval_texts() -> dict[str, list[str]]:
    """The prompts of every registered eval task (the domains' EvalTasks), loaded by the tasks' own loaders."""
    from skillweave.eval_tasks import EVAL_TASKS

    return {name: _task_texts(name) for name in EVAL_TASKS.names()}


@functools.cache
def _task_texts(name: str) -> list[str]:
    from skillweave.eval_tasks import EVAL_TASKS

    return EVAL_TASKS.get(name).eval_texts()


def check_prompts(
    prompts: list[dict],
    n: int = 13,
    template_min_prompts: int | None = 2,
    template_prompts: list[dict] | None = None,
) -> tuple[list[dict], dict]:
    """Drop the prompt-source rows (`{"id", "prompt", "meta"}`) that overlap any skillweave eval set.

    Words inside a TEMPLATE_GRAM-gram shared by `template_min_prompts` or more distinct prompts of
    `prompts` and `template_prompts` (a larger draw of the same source: skillweave.prompts.template_draw)
    are the source's template and do not count (None counts everything). Template-generated sources
    (reasoning-gym math, synthetic IFEval) are made disjoint from their eval sets item by item in
    their domains' sources (skillweave/domains/<domain>/source.py); this check catches verbatim copies of eval items.

    Returns:
        (the kept rows in their order, ngram_overlap_report's report with "dropped_ids" and
        "template_ngrams_ignored" added).
    """
    texts = eval_texts()
    train = [row["prompt"] for row in prompts]
    basis = list(dict.fromkeys(train + [row["prompt"] for row in template_prompts or ()]))
    ignore = frozenset(template_grams(basis, TEMPLATE_GRAM, template_min_prompts)) if template_min_prompts else frozenset()
    report = _report(_matches(train, texts, n, ignore), train, texts, n)
    report["template_ngrams_ignored"], report["template_prompts"] = len(ignore), len(basis)
    dropped = set(report["dropped"])
    report["dropped_ids"] = [prompts[i]["id"] for i in report["dropped"]]
    return [row for i, row in enumerate(prompts) if i not in dropped], report
