"""The n-gram contamination check: what counts as an overlap, the report, and check_prompts on real eval sets."""

from __future__ import annotations

import pytest

from skillweave.contamination import check_prompts, contaminated_indices, eval_texts, ngram_overlap_report
from skillweave.prompts import PROMPT_SOURCES

EVAL = {
    "long": ["the quick brown fox jumps over the lazy dog near the river bank today"],  # 14 words
    "short": ["What is Atlantis?"],  # fewer than n words: matched whole
}

CASES = [
    # (name, training prompt, contaminated) with n=5
    ("shares 5 words", "Tell me: the quick brown fox jumps, please.", True),
    ("case, whitespace and punctuation do not hide it", "THE quick,\n brown -- FOX; jumps", True),
    ("4 shared words are not enough", "the quick brown fox sleeps", False),
    ("a short eval text contained whole", "Briefly, what is Atlantis? Answer in one line.", True),
    ("a short eval text in part", "What is Atlanta known for?", False),
    ("words, not characters: no match inside a word", "what is atlantiSaurus", False),
    ("unrelated", "Write a poem about autumn leaves falling slowly.", False),
]


@pytest.mark.parametrize("name, prompt, contaminated", CASES, ids=[c[0] for c in CASES])
def test_contaminated_indices(name, prompt, contaminated):
    assert contaminated_indices([prompt], EVAL, n=5) == ([0] if contaminated else [])


def test_report_counts_per_eval_set_and_quotes_the_ngram():
    prompts = ["the quick brown fox jumps", "clean prompt here", "so what is atlantis", "lazy dog near the river"]
    report = ngram_overlap_report(prompts, EVAL, n=5)
    assert report["dropped"] == [0, 2, 3]
    assert report["per_eval_set"] == {
        "long": {"eval_texts": 1, "train_prompts_hit": 2, "eval_texts_hit": 1},
        "short": {"eval_texts": 1, "train_prompts_hit": 1, "eval_texts_hit": 1},
    }
    first = report["examples"][0]
    assert (first["train_index"], first["eval_set"], first["eval_index"], first["ngram"]) == (
        0, "long", 0, "the quick brown fox jumps",
    )


def test_n_is_configurable_and_validated():
    prompt = ["the quick brown fox sleeps"]  # shares 4 words
    assert contaminated_indices(prompt, EVAL, n=4) == [0]
    assert contaminated_indices(prompt, EVAL, n=5) == []
    with pytest.raises(ValueError, match="n must be >= 1"):
        contaminated_indices(prompt, EVAL, n=0)


def test_eval_texts_cover_every_task():
    texts = eval_texts()
    assert {name: len(t) for name, t in texts.items()} == {
        "skillweave_ifeval": 541, "skillweave_humaneval": 164, "skillweave_codetasks": 120, "skillweave_math": 1000, "skillweave_arith": 1000,
        "skillweave_dialogue": 805,
        **{f"skillweave_skill_{s}{v}": 200
           for s in ("conventional_commits", "dated_commits", "iso_dates", "json_schema", "si_units")
           for v in ("", "_in_context")},
    }


def test_check_prompts_drops_a_planted_eval_prompt_and_keeps_clean_ones():
    clean = PROMPT_SOURCES.get("dialogue_requests")(20, seed=0)
    humaneval = eval_texts()["skillweave_humaneval"][0]
    # an eval prompt re-wrapped as a training request, with its case and spacing changed
    planted = {"id": "planted", "prompt": "Please solve this:\n" + humaneval.upper(), "meta": {}}
    rows = clean[:10] + [planted] + clean[10:]
    kept, report = check_prompts(rows, n=13)
    assert kept == clean  # the clean ones, in order
    assert report["dropped"] == [10] and report["dropped_ids"] == ["planted"]
    assert report["per_eval_set"]["skillweave_humaneval"]["train_prompts_hit"] == 1
    assert report["examples"][0]["eval_set"] == "skillweave_humaneval"
