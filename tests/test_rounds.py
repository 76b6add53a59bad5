"""Online DPO (`dpo.rounds`): each round samples with the previous round's policy, trains from it, and is
its own artifact, so a stopped run resumes at the next round; merge and what follows read the last round."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from test_pipeline import overrides, run_overrides  # registers the tiny run's rule and prompt source

from skillweave.core.artifacts import MissingArtifactError
from skillweave.models import load_state_dict
from skillweave.deltas import load_delta

DOMAINS = ("math", "code")
STAGES = ("generate", "filter", "dpo")


def inputs_of(ref) -> dict:
    return json.loads((ref.path / "config.json").read_text())["inputs"]


def prompts_of(ref) -> set[str]:
    return {json.loads(line)["prompt"] for line in (ref.path / "samples.jsonl").open()}


class _Log(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def online(tmp_path_factory, tiny_model_dir):
    """Round 0 alone (a run stopped after its first round), then `stage=dpo domain=math dpo.rounds=2`,
    then stage=all with dpo.rounds=2, which resumes code at round 1 and runs merge, zip, eval."""
    import trl

    import skillweave.stages.generate as generate

    tmp = tmp_path_factory.mktemp("rounds")
    ov = overrides(tmp, tiny_model_dir, "domains=[math,code]", "eval.configurations=[dpo]")
    round0 = {}
    for d in DOMAINS:
        for stage in STAGES:
            (round0[f"{stage}/{d}"],) = run_overrides([*ov, f"stage={stage}", f"domain={d}"]).values()
    mtimes0 = {k: (r.path / "manifest.json").stat().st_mtime_ns for k, r in round0.items()}

    seen = {}

    class RecordingDPOTrainer(trl.DPOTrainer):
        """Records the weights DPO starts from and ends with, and where its reference log-probs come from."""

        def __init__(self, *args, **kwargs):
            seen["start"] = {k: v.detach().clone() for k, v in kwargs["model"].state_dict().items()}
            super().__init__(*args, **kwargs)
            seen["reference_is_start"] = self.ref_model is None and self.precompute_ref_logps

        def train(self, *args, **kwargs):
            out = super().train(*args, **kwargs)
            seen["end"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return out

    def recording_sample_batch(model, *args, **kwargs):
        seen.setdefault("sampler", {k: v.detach().clone() for k, v in model.state_dict().items()})
        return sample_batch(model, *args, **kwargs)

    sample_batch = generate.sample_batch
    log, logger = _Log(), logging.getLogger("skillweave")
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trl, "DPOTrainer", RecordingDPOTrainer)
            mp.setattr(generate, "sample_batch", recording_sample_batch)
            math_rounds = run_overrides([*ov, "stage=dpo", "domain=math", "dpo.rounds=2"])
        math_log, log.lines = log.lines, []
        refs = run_overrides([*ov, "dpo.rounds=2"])
        all_log, log.lines = log.lines, []
        again = run_overrides([*ov, "dpo.rounds=2"])
        again_log = log.lines
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
    return {
        "tmp": tmp, "ov": ov, "round0": round0, "mtimes0": mtimes0, "seen": seen, "math_rounds": math_rounds,
        "math_log": math_log, "refs": refs, "all_log": all_log, "again": again, "again_log": again_log,
    }


def test_each_round_is_its_own_artifact(online):
    refs, tmp = online["refs"], online["tmp"]
    for d in DOMAINS:
        for stage in STAGES:
            last, first = refs[f"{stage}/{d}"], refs[f"{stage}/{d}/round0"]
            assert last.complete and first.complete and last.key != first.key
            assert last.manifest()["metrics"]["round"] == 1 and first.manifest()["metrics"]["round"] == 0
    for stage in STAGES:  # two rounds x two domains, nothing else
        assert len([p for p in (tmp / "artifacts" / stage).iterdir() if not p.name.startswith(".")]) == 4
    assert {"merge", "eval", "zip/math", "zip/code"} <= set(refs)


def test_round_one_depends_on_round_zero(online):
    refs = online["refs"]
    for d in DOMAINS:
        generate1, dpo0 = refs[f"generate/{d}"], refs[f"dpo/{d}/round0"]
        assert inputs_of(generate1) == {"policy": dpo0.key}
        assert generate1.config["round"] == 1 and "round" not in refs[f"generate/{d}/round0"].config
        assert inputs_of(refs[f"filter/{d}"]) == {"samples": generate1.key}  # filter's key follows its input
        assert inputs_of(refs[f"dpo/{d}"]) == {"pairs": refs[f"filter/{d}"].key, "policy": dpo0.key}
        assert generate1.manifest()["metrics"]["policy"] == dpo0.key
        # New prompts each round: the next slice of the same seeded source.
        assert not prompts_of(generate1) & prompts_of(refs[f"generate/{d}/round0"])
        assert len(prompts_of(generate1)) == 4


def test_round_zero_is_one_round_dpo_and_a_stopped_run_resumes_at_round_one(online):
    refs, round0 = online["refs"], online["round0"]
    for key, ref in round0.items():
        assert refs[f"{key}/round0"] == ref  # dpo.rounds=1 made the same artifacts (same keys)
        assert (ref.path / "manifest.json").stat().st_mtime_ns == online["mtimes0"][key]  # and none was redone
    # stage=dpo with dpo.rounds=2 reused math's round 0 and ran generate -> filter -> dpo for round 1.
    math = online["math_rounds"]
    assert set(math) == {str(refs["dpo/math/round0"]), *(str(refs[f"{s}/math"]) for s in STAGES)}
    assert sum("nothing to do" in line for line in online["math_log"]) == 1
    assert sum(line.startswith("running ") for line in online["math_log"]) == 3
    # stage=all then found math complete and ran only code's round 1 and the fan-in stages.
    ran = [line.split()[1] for line in online["all_log"] if line.startswith("running ")]
    assert ran == ["generate[code]", "filter[code]", "dpo[code]", "merge", "zip[math]", "zip[code]", "eval"]


def test_round_one_samples_with_and_trains_from_the_previous_policy(online, tiny_model_dir):
    refs, seen = online["refs"], online["seen"]
    base = load_state_dict(tiny_model_dir)
    delta0 = load_delta(refs["dpo/math/round0"].file("delta"))
    delta1 = load_delta(refs["dpo/math"].file("delta"))
    assert any(float(t.abs().max()) > 0 for t in delta0.values())
    for k in base:
        policy0 = base[k] + delta0[k]
        torch.testing.assert_close(seen["sampler"][k], policy0, rtol=0, atol=0)  # generate round 1 (float32 here)
        torch.testing.assert_close(seen["start"][k], policy0, rtol=0, atol=0)  # dpo round 1 starts there
        # ...and the delta it saves is relative to theta_0, not to where it started.
        torch.testing.assert_close(delta1[k], seen["end"][k] - base[k], rtol=0, atol=0)
    assert seen["reference_is_start"]  # reference log-probs precomputed from the starting policy


def test_merge_and_eval_read_the_last_round(online):
    refs = online["refs"]
    last = {f"dpo_{d}": refs[f"dpo/{d}"].key for d in DOMAINS}
    assert refs["merge"].manifest()["inputs"] == last
    eval_inputs = refs["eval"].manifest()["inputs"]
    assert {k: eval_inputs[k] for k in last} == last


def test_rerun_is_a_no_op(online):
    refs, again = online["refs"], online["again"]
    assert {k: r.key for k, r in again.items()} == {k: r.key for k, r in refs.items()}
    assert sum("nothing to do" in line for line in online["again_log"]) == len(refs)
    assert not any(line.startswith("running ") for line in online["again_log"])


@pytest.mark.parametrize(
    "stage, rounds, command",
    [
        # round 1's samples need round 0's policy: the dpo stage of the one-round run
        ("generate", 2, r"run `python -m skillweave stage=dpo domain=code recipe=tiny .* dpo.rounds=1` first"),
        # round 2's pairs need round 2's samples, made by this run's own command for stage=generate
        ("filter", 3, r"run `python -m skillweave stage=generate domain=code recipe=tiny .* dpo.rounds=3` first"),
    ],
)
def test_a_round_alone_names_the_command_for_its_missing_input(tmp_path, tiny_model_dir, stage, rounds, command):
    ov = overrides(tmp_path, tiny_model_dir, f"stage={stage}", "domain=code", f"dpo.rounds={rounds}")
    with pytest.raises(MissingArtifactError, match=command):
        run_overrides(ov)


def test_too_many_rounds_for_the_prompt_source_say_so(tmp_path, tiny_model_dir):
    # test_short_prompts has 21 prompts: round 5 of 4 prompts a round needs 24
    from compose import compose_config, hydra_context

    from skillweave import stages  # noqa: F401
    from skillweave.core.engine import Context
    from skillweave.stages.generate import round_prompts

    with hydra_context():
        ov = overrides(tmp_path, tiny_model_dir, "domain=code", "dpo.rounds=6")
        ctx = Context(cfg=compose_config(ov), overrides=tuple(ov), composer=compose_config)
        assert len(round_prompts(ctx.at_round(4), "code")) == 4
        with pytest.raises(ValueError, match=r"round 5 of dpo.rounds=6 needs 24 prompts in all \(4 new ones a round\)"):
            round_prompts(ctx, "code")


def test_rounds_must_be_positive(tmp_path, tiny_model_dir):
    from compose import compose_config, hydra_context

    with hydra_context(), pytest.raises(Exception, match="dpo.rounds must be >= 1"):
        compose_config(overrides(tmp_path, tiny_model_dir, "dpo.rounds=0"))


def test_one_round_plans_what_plain_dpo_planned(tmp_path, tiny_model_dir):
    """dpo.rounds=1 (the default) adds nothing to any key: existing artifacts stay valid."""
    from compose import compose_config, hydra_context

    from skillweave import stages  # noqa: F401
    from skillweave.core.engine import Context, plan

    with hydra_context():
        ov = overrides(tmp_path, tiny_model_dir)
        ctx = Context(cfg=compose_config(ov), overrides=tuple(ov), composer=compose_config)
        generate_ref, generate_inputs = plan(ctx, "generate", "math")
        dpo_ref, dpo_inputs = plan(ctx, "dpo", "math")
    assert generate_inputs == {} and "round" not in generate_ref.config
    assert set(dpo_ref.config) == {"dpo", "model"} and "rounds" not in dpo_ref.config["dpo"]
    assert set(dpo_inputs) == {"pairs"}
