"""Pair construction (which samples become chosen and rejected, case by case), length balance, and the
filter stage's outputs: pairs, report, dataset card, W&B run."""

from __future__ import annotations

import json
import os

import pytest

from skillweave.config import FilterConfig, PairStrategy
from skillweave.cards import dataset_card
from skillweave.pairs import can_be_chosen, length_stats, make_pairs, pair_report


def s(prompt: str, i: int, passed: bool, score: float, response: str, truncated: bool = False) -> dict:
    return {"prompt_id": prompt, "sample": i, "passed": passed, "score": score, "response": response,
            "truncated": truncated, "rules": {"r": {"passed": passed}}}


SAMPLES = [
    s("p", 0, True, 1.0, "right, short"),
    s("p", 1, True, 1.0, "right but truncated ...", truncated=True),
    s("p", 2, False, 0.0, "wrong and a great deal longer than the chosen one"),
    s("p", 3, False, 0.0, "wrong, short"),
    s("p", 4, False, 0.5, "half right"),
    s("q", 0, False, 0.0, "all wrong"),  # no passing sample: no pair
    s("q", 1, False, 0.2, "all wrong too"),
    s("r", 0, True, 1.0, "same"),  # identical texts never form a pair
    s("r", 1, False, 0.0, "same"),
]


def pairs_of(cfg: FilterConfig) -> list[tuple[str, str]]:
    return [(c["response"], r["response"]) for c, r in make_pairs(SAMPLES, cfg)]


@pytest.mark.parametrize(
    "cfg, expected",
    [
        # best vs worst: the truncated pass is never chosen; among the two worst (score 0) the one
        # closest in length to the chosen is rejected
        (FilterConfig(), [("right, short", "wrong, short")]),
        # a margin above every pair's score difference leaves nothing
        (FilterConfig(min_margin=1.01), []),
        # all pass x fail, capped per prompt; the truncated pass still never chosen
        (
            FilterConfig(strategy=PairStrategy.all_pass_fail, max_pairs_per_prompt=3),
            [
                ("right, short", "wrong and a great deal longer than the chosen one"),
                ("right, short", "wrong, short"),
                ("right, short", "half right"),
            ],
        ),
        # the margin filter drops the half-right rejected (difference 0.5)
        (
            FilterConfig(strategy=PairStrategy.all_pass_fail, max_pairs_per_prompt=5, min_margin=0.6),
            [("right, short", "wrong and a great deal longer than the chosen one"), ("right, short", "wrong, short")],
        ),
    ],
)
def test_make_pairs(cfg, expected):
    assert pairs_of(cfg) == expected


def test_reference_vs_fail_pairs_the_reference_with_each_failing_sample():
    references = {
        "p": s("p", -1, True, 1.0, "the reference"),
        "q": s("q", -1, False, 0.0, "a reference that fails its rules"),  # never chosen
    }  # r has none: no pair, though it has a passing sample
    cfg = FilterConfig(strategy=PairStrategy.reference_vs_fail, max_pairs_per_prompt=2)
    pairs = [(c["response"], r["response"]) for c, r in make_pairs(SAMPLES, cfg, references)]
    # the worst failing samples first (score 0, then sample order); the passing samples are not chosen
    assert pairs == [("the reference", "wrong and a great deal longer than the chosen one"), ("the reference", "wrong, short")]
    with pytest.raises(ValueError, match="needs the reference answers"):
        make_pairs(SAMPLES, cfg)


def test_report_counts_rules_and_length_ratio():
    pairs = make_pairs(SAMPLES, FilterConfig())
    report = pair_report(SAMPLES, pairs)
    assert report["samples"] == 9 and report["prompts"] == 3 and report["pairs"] == 1
    assert report["pass_rate"] == round(3 / 9, 4)
    assert report["pass_rate_per_rule"] == {"r": round(3 / 9, 4)}
    assert report["chosen_rejected_length_ratio"] == 1.0  # "right, short" vs "wrong, short"


# --- quality guards: a sample failing one is never chosen -----------------------------------------

def guarded(rules: dict[str, bool], passed: bool = True, truncated: bool = False) -> dict:
    return {"prompt_id": "g", "sample": 0, "passed": passed, "score": 1.0, "response": "x", "truncated": truncated,
            "rules": {name: {"passed": ok} for name, ok in rules.items()}}


@pytest.mark.parametrize(
    "name, row, expected",
    [
        ("every rule passed", guarded({"ifeval_instructions": True, "is_english": True, "is_coherent": True}), True),
        ("failed a checker", guarded({"ifeval_instructions": False}, passed=False), False),
        ("truncated flag", guarded({"ifeval_instructions": True}, truncated=True), False),
        # `passed` says yes but a guard's own verdict says no (a rule set combined differently, a
        # hand-edited scored.jsonl): the guard wins
        ("is_english failed", guarded({"ifeval_instructions": True, "is_english": False}), False),
        ("is_coherent failed", guarded({"ifeval_instructions": True, "is_coherent": False}), False),
        ("not_truncated failed", guarded({"ifeval_instructions": True, "not_truncated": False}), False),
        # a rule set without guards: `passed` and the truncated flag decide
        ("no guards listed", guarded({"final_number_matches": True}), True),
    ],
)
def test_can_be_chosen(name, row, expected):
    assert can_be_chosen(row) is expected


def test_a_passing_row_with_a_failed_guard_is_never_chosen():
    rows = [guarded({"is_coherent": False}), {**guarded({"is_coherent": True}), "sample": 1, "response": "y",
                                               "score": 0.9}, {**guarded({}, passed=False), "sample": 2,
                                                               "response": "z", "score": 0.0}]
    assert [(c["response"], r["response"]) for c, r in make_pairs(rows, FilterConfig())] == [("y", "z")]


# --- length balance -----------------------------------------------------------------------------

def sized(i: int, passed: bool, score: float, n: int) -> dict:
    """Sample i of prompt "L" with a response of exactly n characters."""
    return s("L", i, passed, score, f"s{i}".ljust(n, "."))


# chosen: c0 (20 chars), c1 (60); rejected: f0 (100, score 0), f1 (70, 0), f2 (45, 0.5), f3 (35, 0.2)
LENGTHS = [sized(0, True, 1.0, 20), sized(1, True, 1.0, 60), sized(2, False, 0.0, 100), sized(3, False, 0.0, 70),
           sized(4, False, 0.5, 45), sized(5, False, 0.2, 35)]
NAMES = {r["response"]: f"{'c' if r['passed'] else 'f'}{r['sample'] if r['passed'] else r['sample'] - 2}" for r in LENGTHS}
ALL = PairStrategy.all_pass_fail


@pytest.mark.parametrize(
    "name, cfg, expected",
    [
        # best chosen c0; of the two worst (f0 100, f1 70) the closer to 20 chars: ratio 0.29
        ("none", FilterConfig(), [("c0", "f1")]),
        # the rejected closest in length whatever its score: f3 (35 chars, |log 20/35| = 0.56)
        ("match", FilterConfig(length_balance="match"), [("c0", "f3")]),
        # f3 and f2 differ by less than the margin 0.9 from c0: the closest of f0, f1
        ("match respects the margin", FilterConfig(length_balance="match", min_margin=0.9), [("c0", "f1")]),
        # no rejected within 1.5x of c0's 20 chars; c1 (60) has f1 (70, 0.86) and f2 (45, 1.33): the worst, f1
        ("ratio picks the best pair within bounds", FilterConfig(length_balance="ratio"), [("c1", "f1")]),
        # nothing within 1.1x: no pair for the prompt
        ("ratio leaves nothing", FilterConfig(length_balance="ratio", max_length_ratio=1.1), []),
        # all pairs: the product order, capped at 2
        ("all, none", FilterConfig(strategy=ALL, max_pairs_per_prompt=2), [("c0", "f0"), ("c0", "f1")]),
        # closest first: c1-f1 (|log| 0.15), c1-f2 (0.29), then c1-f0 (0.51)
        ("all, match", FilterConfig(strategy=ALL, max_pairs_per_prompt=3, length_balance="match"),
         [("c1", "f1"), ("c1", "f2"), ("c1", "f0")]),
        # within 1.5x, in the product order
        ("all, ratio", FilterConfig(strategy=ALL, max_pairs_per_prompt=5, length_balance="ratio"),
         [("c1", "f1"), ("c1", "f2")]),
    ],
)
def test_length_balance(name, cfg, expected):
    assert [(NAMES[c["response"]], NAMES[r["response"]]) for c, r in make_pairs(LENGTHS, cfg)] == expected


def test_length_balance_settings_are_checked():
    from hydra.errors import ConfigCompositionException

    from compose import compose_config, hydra_context

    with pytest.raises(ValueError, match="filter.max_length_ratio must be >= 1"):
        FilterConfig(length_balance="ratio", max_length_ratio=0.9)
    with hydra_context():
        assert compose_config(["filter.length_balance=match"]).filter.length_balance == "match"
        with pytest.raises(ConfigCompositionException) as info:  # a typo fails at start, naming the choices
            compose_config(["filter.length_balance=matchh"])
        assert "none, match, ratio" in str(info.value) + str(info.value.__cause__)


def test_report_shows_the_length_ratio_before_and_after():
    before = make_pairs(LENGTHS, FilterConfig())
    after = make_pairs(LENGTHS, FilterConfig(length_balance="match"))
    report = pair_report(LENGTHS, after, before)
    assert report["chosen_rejected_length_ratio_before"] == round(20 / 70, 3)
    assert report["chosen_rejected_length_ratio"] == round(20 / 35, 3)
    assert report["pairs_before_length_balance"] == report["pairs"] == 1
    assert report["median_pair_length_ratio"] == round(20 / 35, 3)


def test_dataset_card_takes_the_report_the_stage_already_has():
    rows = [{**r, "prompt": "say something"} for r in LENGTHS]
    before = make_pairs(rows, FilterConfig())
    after = make_pairs(rows, FilterConfig(length_balance="match"))
    report = pair_report(rows, after, before)
    # given the report, the card is what it computes by itself; and it reads the report it is given
    assert dataset_card("d", rows, after, before, {}, {}, report=report) == dataset_card("d", rows, after, before, {}, {})
    marked = dataset_card("d", rows, after, before, {}, {}, report={**report, "pass_rate": 0.123})
    assert marked["pass_rate"] == 0.123


def test_length_stats():
    pairs = [(sized(0, True, 1, 30), sized(1, False, 0, 10)), (sized(2, True, 1, 10), sized(3, False, 0, 20)),
             (sized(4, True, 1, 20), sized(5, False, 0, 20))]
    assert length_stats(pairs) == {
        "pairs": 3,
        "chosen_rejected_length_ratio": 1.2,  # 60 / 50
        "median_pair_length_ratio": 1.0,  # of 3.0, 0.5, 1.0
        "chosen_longer_fraction": round(1 / 3, 4),
    }
    assert length_stats([])["chosen_rejected_length_ratio"] is None


# --- the filter stage end to end: pairs, report, dataset card, W&B --------------------------------

CONTAMINATION = {"n": 13, "train_prompts": 5, "dropped": [4], "dropped_ids": ["m4"], "examples": [],
                 "per_eval_set": {"skillweave_math": {"eval_texts": 100, "train_prompts_hit": 1, "eval_texts_hit": 1},
                                  "skillweave_ifeval": {"eval_texts": 541, "train_prompts_hit": 0, "eval_texts_hit": 0}}}


def math_samples() -> list[dict]:
    rows = []
    answers = {
        "m1": ["6 * 7 = 42, so the answer is 42.", "6 * 7 = 48", "So 6 * 7 is 42 and " * 20 + "42", "6 * 7 = 42"],
        "m2": ["9 - 4 = 5", "9 - 4 = 13", "It is 5.", "9 - 4 is"],
        "m3": ["no idea", "3", "I think 4", "maybe 7"],  # nothing right: no pair
    }
    gold = {"m1": "42", "m2": "5", "m3": "12"}
    for pid, responses in answers.items():
        for i, response in enumerate(responses):
            rows.append({"prompt_id": pid, "prompt": f"question {pid}", "meta": {"answer": gold[pid]}, "sample": i,
                         "response": response, "n_tokens": len(response.split()), "truncated": pid == "m2" and i == 0})
    return rows


def run_filter(tmp_path, *overrides: str):
    from compose import compose_config, hydra_context

    from skillweave.core.artifacts import make_ref
    from skillweave.core.engine import STAGES, Context
    from skillweave.stages import filter as filter_stage

    with hydra_context():
        cfg = compose_config(["stage=filter", "domain=math", f"artifacts_root={tmp_path / 'artifacts'}", *overrides])
    samples = make_ref(tmp_path / "artifacts", "generate", "math", {"test": 1}, {}, outputs=STAGES.get("generate").outputs)
    samples.path.mkdir(parents=True)
    (samples.path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in math_samples()))
    (samples.path / "contamination.json").write_text(json.dumps(CONTAMINATION))
    ref = make_ref(tmp_path / "artifacts", "filter", "math", {"test": 1}, {"samples": samples}, outputs=STAGES.get("filter").outputs)
    ref.path.mkdir(parents=True)
    return ref, filter_stage.run(Context(cfg=cfg), "math", ref, {"samples": samples})


def test_filter_stage_writes_pairs_report_and_card(tmp_path):
    from datasets import load_from_disk

    ref, report = run_filter(tmp_path)
    pairs = load_from_disk(str(ref.path / "pairs"))
    # m1: the loop reaches 42 but fails is_coherent: never chosen; the best passing answer against the
    # worst (score 1/3: wrong, coherent, complete); m2: the right answer is truncated, "It is 5." is chosen,
    # and of the two worst ("9 - 4 = 13", "9 - 4 is": final number 4) the one of its length
    assert [(p["prompt_id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("m1", "6 * 7 = 42, so the answer is 42.", "6 * 7 = 48"),
        ("m2", "It is 5.", "9 - 4 is"),
    ]
    assert report == json.loads((ref.path / "report.json").read_text())
    card = json.loads((ref.path / "card.json").read_text())
    assert card["domain"] == "math"
    assert card["counts"] == {"prompts": 3, "samples": 12, "passing_samples": 3, "choosable_samples": 3,
                              "prompts_with_pairs": 2, "pairs": 2, "pairs_before_length_balance": 2}
    assert card["pass_rate_per_rule"]["is_coherent"] == round(11 / 12, 4)
    assert card["truncated_fraction"] == round(1 / 12, 4)
    assert card["lengths"]["chosen"]["n"] == 2 and card["lengths"]["chosen"]["max"] == 32
    assert card["lengths"]["after_length_balance"]["chosen_rejected_length_ratio"] == round((32 + 8) / (10 + 8), 3)
    assert card["contamination"] == {"checked": True, "ngram": 13, "train_prompts": 5, "dropped": 1,
                                     "per_eval_set": {"skillweave_ifeval": 0, "skillweave_math": 1}}
    assert card["settings"]["filter"]["length_balance"] == "none"
    assert [r["name"] for r in card["settings"]["rules"]["rules"]] == ["final_number_matches", "is_coherent",
                                                                        "not_truncated"]
    assert card["settings"]["samples_artifact"].startswith("generate/math-")
    md = (ref.path / "card.md").read_text()
    assert md.startswith("# DPO pairs: math\n")
    assert "| is_coherent | 91.7% |" in md and "| skillweave_math | 1 |" in md
    assert "| before length balance | 2 | 2.222 | 2.1 | 0.5 |" in md
    assert "wandb_run_dir" not in report and not (ref.path / "wandb").exists()  # wandb.mode=disabled


def test_reference_vs_fail_stops_on_a_source_without_references(tmp_path):
    with pytest.raises(ValueError, match="prompt source 'math_reasoning_gym' of domain math has no reference answers"):
        run_filter(tmp_path, "filter.strategy=reference_vs_fail")


def test_filter_stage_takes_code_references_as_chosen(tmp_path):
    """Two code tasks: the references pass their tests in the sandbox and are chosen against the
    failing samples; the backbone's one passing sample is not used."""
    from compose import compose_config, hydra_context

    from skillweave.core.artifacts import make_ref
    from skillweave.core.engine import STAGES, Context
    from skillweave.domains.code.source import code_task_reference, code_tasks
    from skillweave.stages import filter as filter_stage

    tasks = code_tasks(2, seed=0)
    right = code_task_reference(tasks[0]["prompt"])
    responses = {0: ["```python\ndef nothing():\n    pass\n```", "Sure! " + right], 1: ["I cannot write that."]}
    rows = [{"prompt_id": t["id"], "prompt": t["prompt"], "meta": t["meta"], "sample": i, "response": r,
             "n_tokens": 9, "truncated": False}
            for k, t in enumerate(tasks) for i, r in enumerate(responses[k])]
    with hydra_context():
        cfg = compose_config(["stage=filter", "domain=code", f"artifacts_root={tmp_path / 'artifacts'}",
                              "filter.strategy=reference_vs_fail", "filter.max_pairs_per_prompt=4"])
    samples = make_ref(tmp_path / "artifacts", "generate", "code", {"test": 1}, {}, outputs=STAGES.get("generate").outputs)
    samples.path.mkdir(parents=True)
    (samples.path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = make_ref(tmp_path / "artifacts", "filter", "code", {"test": 1}, {"samples": samples}, outputs=STAGES.get("filter").outputs)
    ref.path.mkdir(parents=True)
    report = filter_stage.run(Context(cfg=cfg), "code", ref, {"samples": samples})
    assert (report["pairs"], report["reference_answers"], report["reference_answers_choosable"]) == (2, 2, 2)
    references = [json.loads(line) for line in (ref.path / "references.jsonl").open()]
    assert [(r["prompt_id"], r["sample"], r["score"]) for r in references] == [(t["id"], -1, 1.0) for t in tasks]
    from datasets import load_from_disk

    pairs = load_from_disk(str(ref.path / "pairs"))
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        (right, responses[0][0]), (code_task_reference(tasks[1]["prompt"]), responses[1][0])]
    card = json.loads((ref.path / "card.json").read_text())
    assert card["counts"]["reference_answers_choosable"] == 2 and card["counts"]["passing_samples"] == 1


def test_filter_stage_reports_length_balance(tmp_path):
    ref, report = run_filter(tmp_path, "filter.length_balance=ratio", "filter.max_length_ratio=2.0")
    # m1's 32-char answer is 3.2x "6 * 7 = 48" (10 chars) and 0.08x the loop: the best pair within 2x is
    # the terse "6 * 7 = 42" (10 chars) against "6 * 7 = 48"; m2's pair was already 1.0
    assert report["pairs"] == 2 and report["pairs_before_length_balance"] == 2
    assert report["chosen_rejected_length_ratio_before"] == round((32 + 8) / (10 + 8), 3)
    assert report["chosen_rejected_length_ratio"] == 1.0
    assert (report["median_pair_length_ratio_before"], report["median_pair_length_ratio"]) == (2.1, 1.0)
    card = json.loads((ref.path / "card.json").read_text())
    assert card["settings"]["filter"]["max_length_ratio"] == 2.0


def test_filter_stage_logs_the_card_to_wandb_offline(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wandb-home"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    ref, report = run_filter(tmp_path, "wandb.project=skillweave-test", "wandb.group=g1")
    (run_dir,) = (wandb_dir / "wandb").glob("offline-run-*")
    assert report["wandb_run_dir"] == str(run_dir)
    assert list(run_dir.glob("run-*.wandb"))  # the binary log `wandb sync` uploads
    # W&B's other folders went beside the runs, not to ~/.cache, and only for the run's duration
    assert {p.name for p in wandb_dir.iterdir()} >= {"wandb", "cache", "config", "data"}
    assert "WANDB_CACHE_DIR" not in os.environ
