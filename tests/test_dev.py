"""Stage dev: a held-out split of the training distribution that DPO settings are tuned on."""

from __future__ import annotations

import json
import random

import pytest
from conftest import WORDS
from test_pipeline import overrides, run_overrides

from skillweave.prompts import PROMPT_SOURCES, prompt_id


@PROMPT_SOURCES.register("test_pool_prompts")
def pool_prompts(n: int, seed: int) -> list[dict]:
    """A finite pool drawn in a seeded order, as code_tasks is: two seeds' draws overlap."""
    pool = [f"say {w} and {w}" for w in WORDS]
    random.Random(seed).shuffle(pool)
    return [{"id": prompt_id(p), "prompt": p, "meta": {"answer": "1"}} for p in pool[:n]]


@pytest.fixture(scope="module")
def dev_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("dev")
    ov = overrides(tmp, tiny_model_dir, "domain.prompt_source.name=test_pool_prompts", "domain.sampling.num_prompts=8",
                   "dev.prompts=12", "stage=dev", "domain=math")
    return tmp, ov, run_overrides(ov)


def _dev(refs: dict):
    return next(r for r in refs.values() if r.stage == "dev")


def test_dev_trains_what_it_scores_on_prompts_no_round_trains_on(dev_run):
    tmp, ov, refs = dev_run
    assert {r.stage for r in refs.values()} == {"generate", "filter", "dpo", "dev"}
    dev = _dev(refs)
    answers = [json.loads(line) for line in (dev.path / "answers.jsonl").read_text().splitlines()]
    trained_on = {json.loads(line)["prompt_id"] for line in (next(r for r in refs.values() if r.stage == "generate").path / "samples.jsonl").open()}
    m = dev.manifest()["metrics"]
    # 12 drawn from a pool of 21 with another seed: the ones the 8 training prompts share are dropped.
    assert m["prompts"] == len(answers) == 12 - m["dropped_training_prompts"] and m["dropped_training_prompts"] > 0
    assert not {a["prompt_id"] for a in answers} & trained_on
    # The paired difference is the difference of the two means over the same prompts.
    assert m["delta"] == pytest.approx(m["score"] - m["score_start"])
    assert m["changed"] == sum(a["response"] != a["start_response"] for a in answers) / len(answers)
    dpo = next(r for r in refs.values() if r.stage == "dpo").manifest()["metrics"]
    assert m["relative_weight_change"] == dpo["relative_weight_change"] and m["pairs"] == dpo["pairs"]


def test_a_sweep_point_reuses_the_starting_answers_and_a_zero_step_reproduces_them(dev_run, monkeypatch):
    from skillweave.stages import dev as dev_stage
    from skillweave.sweep import sweep_table

    tmp, ov, refs = dev_run
    calls = []
    real = dev_stage.answer
    monkeypatch.setattr(dev_stage, "answer", lambda ctx, d, ps, delta, desc: (calls.append(desc), real(ctx, d, ps, delta, desc))[1])
    # lr 0: the trained policy is the starting one, so every greedy answer is the same
    point = run_overrides([*ov, "dpo.learning_rate=0.0"])
    assert calls == ["dev[math] trained"]  # the start answers are the first point's
    m = _dev(point).manifest()["metrics"]
    assert m["changed"] == 0.0 and m["delta"] == 0.0 and m["relative_weight_change"] == 0.0
    table = sweep_table(tmp / "artifacts", "math").splitlines()
    assert len(table) == 2 + 2 and all("| math | " in line for line in table[2:])
    gains = [float(line.split(" | ")[9].split(" ± ")[0]) for line in table[2:]]
    assert {line.split(" | ")[1] for line in table[2:]} == {"0", "5e-06"} and gains == sorted(gains, reverse=True)


def test_the_sweep_command_prints_the_table_or_says_how_to_call_it(dev_run, capsys):
    from skillweave.sweep import main, sweep_table

    tmp, _, _ = dev_run
    main([str(tmp / "artifacts")])
    assert capsys.readouterr().out == sweep_table(tmp / "artifacts")
    with pytest.raises(SystemExit, match="usage: skillweave-sweep"):
        main([str(tmp / "missing")])


def test_dev_prompts_cannot_all_be_training_prompts(tmp_path, tiny_model_dir):
    ov = overrides(tmp_path, tiny_model_dir, "domain.prompt_source.name=test_pool_prompts", "domain.sampling.num_prompts=21",
                   "stage=dev", "domain=math")
    with pytest.raises(ValueError, match="dev prompts .* are training prompts of domain math"):
        run_overrides(ov)


def test_a_dev_split_mostly_of_training_prompts_is_flagged(caplog, monkeypatch):
    """code_tasks-like pools: 15 of 21 prompts train, so most of a 12-prompt dev draw is dropped, and the
    warning says how large a draw keeps 12."""
    from types import SimpleNamespace as NS

    from skillweave.stages import dev
    from skillweave.stages.dev import dev_prompts

    monkeypatch.setattr(dev, "_WARNED", set())  # said once per process: start from none said

    def ctx(num_prompts: int):
        cfg = NS(domain=NS(prompt_source=NS(name="test_pool_prompts", kwargs={}), sampling=NS(num_prompts=num_prompts, seed=0)),
                 dpo=NS(rounds=1), dev=NS(prompts=12))
        return NS(for_domain=lambda domain: cfg)

    with caplog.at_level("WARNING", logger="skillweave"):
        kept, dropped = dev_prompts(ctx(15), "math")
    assert len(kept) + dropped == 12 and 2 * len(kept) < 12
    assert f"only {len(kept)} of 12 dev prompts are not training prompts" in caplog.text and "raise dev.prompts" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="skillweave"):
        dev_prompts(ctx(15), "math")  # the run asks again after planning did: one warning is enough
    assert not caplog.text
    with caplog.at_level("WARNING", logger="skillweave"):
        kept, _ = dev_prompts(ctx(2), "math")
    assert len(kept) >= 10 and not caplog.text
