"""The instructions domain's prompts: synthetic IFEval-style requests whose instructions lm-eval's own
IFEval checkers verify (source `ifeval_synthetic`); IFEval's 541 prompts are the eval set."""

from __future__ import annotations

import logging
import random
from functools import cache

from skillweave.core.errors import ConfigError
from skillweave.prompts import PROMPT_SOURCES, check_n, row, take

log = logging.getLogger(__name__)


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
    from skillweave.domains.instructions.verifiers import ensure_punkt_tab

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
        ConfigError: max_instructions < 1. DataError: fewer than n distinct prompts after 50 * n draws.
    """
    check_n(n, "ifeval_synthetic")
    if max_instructions < 1:
        raise ConfigError(f"ifeval_synthetic: max_instructions must be >= 1, got {max_instructions}")
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
        rows.append(row(prompt, {"instruction_id_list": ids, "kwargs": kwargs}))
    return take(rows, n, "ifeval_synthetic")


