"""The engine on a stage defined here (docs/adding_a_stage.md's example): declared outputs, planning
from config alone, a missing input named with its command, pulls, and one execution per artifact."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import pytest
from other_job import hold_as_another_job, stop
from test_pipeline import overrides, run_overrides

from compose import compose_config, hydra_context
from skillweave.app import context
from skillweave.core.artifacts import ArtifactRef, atomic_write_json, read_jsonl
from skillweave.core.compose import replayable
from skillweave.core import engine
from skillweave.core.engine import STAGES, Context, Need, Pulls, Stage, execute, ref_for
from skillweave.core.errors import MissingArtifactError
from skillweave.core.flow import run_all, run_stage


def plan(ctx: Context, domain: Optional[str]):
    return {"stats": {"version": 1}}, {"samples": Need(ctx, "generate", domain)}


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict[str, ArtifactRef]) -> dict:
    rows = read_jsonl(inputs["samples"].file("samples"))
    stats = {"samples": len(rows), "truncated": sum(r["truncated"] for r in rows)}
    atomic_write_json(ref.file("stats"), stats)
    return stats


@pytest.fixture
def prompt_stats(monkeypatch):
    stage = Stage("prompt_stats", per_domain=True, plan=plan, run=run, outputs={"stats": "stats.json"})
    monkeypatch.setitem(STAGES._items, "prompt_stats", stage)
    return stage


def ctx_for(ov: list[str]) -> Context:
    return context(compose_config(ov), replayable(ov), compose_config)


def test_a_new_stage_plans_runs_and_is_reused(tmp_path, tiny_model_dir, prompt_stats):
    ov = overrides(tmp_path, tiny_model_dir)
    with hydra_context():
        ctx = ctx_for(ov)
        with pytest.raises(MissingArtifactError, match=r"run `python -m skillweave stage=generate domain=math .*` first"):
            execute(ctx, "prompt_stats", "math")  # pulls nothing: its input is named with the command
        ref = ref_for(ctx, "prompt_stats", "math")
        assert ref.inputs == {"samples": ref_for(ctx, "generate", "math").key}  # keyed by its input's key
    run_overrides([*ov, "stage=generate"])
    with hydra_context():
        ctx = ctx_for(ov)
        done = execute(ctx, "prompt_stats", "math")
        assert done == ref and done.complete
        rows = read_jsonl(ref_for(ctx, "generate", "math").file("samples"))
        assert done.manifest()["metrics"] == {"samples": len(rows), "truncated": sum(r["truncated"] for r in rows)}
        assert sorted(p.name for p in done.path.iterdir() if not p.name.startswith(".")) == [
            "config.json", "manifest.json", "stats.json"]
        mtime = (done.path / "manifest.json").stat().st_mtime_ns
        assert execute(ctx, "prompt_stats", "math") == ref  # complete: reused, not redone
        assert (done.path / "manifest.json").stat().st_mtime_ns == mtime


def test_a_stage_that_pulls_everything_makes_its_inputs_once(tmp_path, tiny_model_dir, prompt_stats, monkeypatch, caplog):
    monkeypatch.setitem(STAGES._items, "prompt_stats", replace(prompt_stats, pulls=Pulls.everything))
    released = []  # what each stage freed goes back to the OS before the next one runs (core/memory.py)
    monkeypatch.setattr(engine, "release_memory", lambda: released.append(len(caplog.messages)))
    ov = overrides(tmp_path, tiny_model_dir)
    with hydra_context(), caplog.at_level("INFO", logger="skillweave"):
        refs = run_stage(ctx_for(ov), "prompt_stats", "math")
    assert [ref.stage for ref in refs.values()] == ["generate", "prompt_stats"]
    running = [i for i, line in enumerate(caplog.messages) if line.startswith("running ")]
    assert len(running) == 2 and len(released) == 2 and running[0] < released[0] <= running[1] < released[1]


def _reads(needs: dict[str, str]):
    """A stage's plan that hashes no settings and reads the artifact of each stage named in `needs`."""
    return lambda ctx, domain: ({}, {n: Need(ctx, s) for n, s in needs.items()})


def _tally(made: list, other_job: dict):
    """A stage's run that records each domain it makes; making code's artifact ends the other job."""

    def tally(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict[str, ArtifactRef]) -> dict:
        made.append(domain)
        if domain == "code":
            stop(other_job)  # the other job stops before finishing math
        atomic_write_json(ref.file("tally"), {"domain": domain})
        return {}

    return tally


def test_stage_all_puts_off_a_domain_another_job_is_making_and_then_reuses_it(tmp_path, tiny_model_dir, monkeypatch,
                                                                            caplog):
    """Two commands on one artifacts_root share the domains: the one that finds math's artifact locked makes
    code's first, then waits its turn for math's. Here the other job is a lock this test holds and lets go
    of while code's artifact is made; with nobody making math meanwhile, this command makes it last."""
    made, other_job = [], {}
    stage = Stage("tally", per_domain=True, plan=lambda ctx, domain: ({}, {}), run=_tally(made, other_job),
                  outputs={"tally": "tally.json"})
    monkeypatch.setitem(STAGES._items, "tally", stage)
    ov = overrides(tmp_path, tiny_model_dir, "pipeline=[tally]", "domains=[math,code]")
    with hydra_context(), caplog.at_level("INFO", logger="skillweave"):
        ctx = ctx_for(ov)
        hold_as_another_job(monkeypatch, ref_for(ctx, "tally", "math"), other_job)
        refs = run_all(ctx)
    assert made == ["code", "math"]
    assert refs["tally/math"].complete and refs["tally/code"].complete
    assert any("domain math's turn comes after the other domains" in m for m in caplog.messages)
    with hydra_context():
        assert run_all(ctx_for(ov)) == refs and made == ["code", "math"]  # complete: nothing made again


def test_a_fan_in_stage_puts_off_a_domain_another_job_is_making(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """The same sharing for a per-domain stage that reads a fan-in artifact (as zip reads the merge): it runs
    after every domain's job, and the domain another job is making comes last."""
    made, other_job = [], {}
    tally = _tally(made, other_job)
    for name, per_domain, needs in (("pooled", False, {}), ("tally", True, {"pooled": "pooled"})):
        monkeypatch.setitem(STAGES._items, name, Stage(name, per_domain=per_domain, plan=_reads(needs), run=tally,
                                                       outputs={"tally": "tally.json"}))
    ov = overrides(tmp_path, tiny_model_dir, "pipeline=[tally]", "domains=[math,code]")
    with hydra_context(), caplog.at_level("INFO", logger="skillweave"):
        ctx = ctx_for(ov)
        hold_as_another_job(monkeypatch, ref_for(ctx, "tally", "math"), other_job)
        refs = run_all(ctx)
    assert made == [None, "code", "math"]  # the pooled artifact first, then code, then math
    assert refs["tally/math"].complete and refs["tally/code"].complete
    assert any("domain math's turn comes after the stage's other domains" in m for m in caplog.messages)


def test_a_stage_with_partial_inputs_makes_what_it_can_while_another_job_makes_an_input(tmp_path, tiny_model_dir,
                                                                                      monkeypatch, caplog):
    """As an eval scores the rows whose inputs exist while another job trains the multitask DPO: the stage
    is run on the inputs at hand first, then waits for the other (here made by this command, as the other
    job stops), then runs on all of them; the two passes are two runs of its manifest."""
    calls, other_job = [], {}

    def maker(name: str):
        def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict[str, ArtifactRef]) -> dict:
            calls.append((name, sorted(inputs)))
            if name == "consumer" and len(inputs) == 1:
                stop(other_job)
            if name != "consumer" or len(inputs) == 2:
                atomic_write_json(ref.file("out"), {"name": name})
            return {}
        return run

    for name, needs, partial in (("left", {}, False), ("right", {}, False),
                                 ("consumer", {"left": "left", "right": "right"}, True)):
        monkeypatch.setitem(STAGES._items, name, Stage(name, per_domain=False, plan=_reads(needs), run=maker(name),
                                                       outputs={"out": "out.json"}, pulls=Pulls.everything,
                                                       partial_inputs=partial))
    ov = overrides(tmp_path, tiny_model_dir)
    with hydra_context(), caplog.at_level("INFO", logger="skillweave"):
        ctx = ctx_for(ov)
        hold_as_another_job(monkeypatch, ref_for(ctx, "right"), other_job)
        refs = run_stage(ctx, "consumer", None)
    assert calls == [("left", []), ("consumer", ["left"]), ("right", []), ("consumer", ["left", "right"])]
    consumer = ref_for(ctx, "consumer")
    assert consumer.complete and set(refs) == {str(ref_for(ctx, s)) for s in ("left", "right", "consumer")}
    assert consumer.manifest()["runs"] == 2
    assert any("while another job makes right/all" in m for m in caplog.messages)


# ---- domain_overrides: one multi-domain run, each domain with its own recipe


def test_domain_overrides_apply_to_their_domain_under_the_command_line(tmp_path):
    # on the command line a new key of the mapping takes Hydra's "+" (a recipe YAML sets it plainly)
    per = ["+domain_overrides.math=['dpo.learning_rate=0.5','domain.sampling.num_prompts=7']", "+domain_overrides.code=['dpo.beta=0.3']"]
    with hydra_context():
        math = compose_config(["domains=[math,code]", *per])
        assert (math.dpo.learning_rate, math.domain.sampling.num_prompts, math.dpo.beta) == (0.5, 7, 0.1)
        code = compose_config(["domains=[math,code]", *per, "domain=code"])
        plain = compose_config(["domains=[math,code]", "domain=code"])
        assert (code.dpo.learning_rate, code.dpo.beta) == (plain.dpo.learning_rate, 0.3) and plain.dpo.learning_rate != 0.5
        assert compose_config(["domains=[math,code]", *per, "dpo.learning_rate=0.25"]).dpo.learning_rate == 0.25
        ov = [f"artifacts_root={tmp_path}", "domains=[math,code]", *per, "domain=code"]
        ctx = Context(cfg=compose_config(ov), overrides=replayable(ov), composer=compose_config)
        assert ctx.for_domain("math").dpo.learning_rate == 0.5 and ctx.for_domain("code").dpo.beta == 0.3


def test_a_domain_override_keys_artifacts_as_the_same_setting_given_directly(tmp_path, tiny_model_dir):
    base = overrides(tmp_path, tiny_model_dir)

    def key(extra):
        ov = [*base, *extra]
        with hydra_context():
            ctx = Context(cfg=compose_config(ov), overrides=replayable(ov), composer=compose_config)
            return ref_for(ctx, "dpo", "math").key

    direct = key(["dpo.learning_rate=0.5"])
    assert key(["+domain_overrides.math=['dpo.learning_rate=0.5']"]) == direct
    assert key(["+domain_overrides.code=['dpo.learning_rate=0.5']"]) != direct


@pytest.mark.parametrize("per, words", [
    ("+domain_overrides.poetry=['dpo.beta=0.3']", "domain_overrides.poetry: poetry is not among domains"),
    ("+domain_overrides.math=['domain=code']", "is not a setting override for one domain"),
    ("+domain_overrides.math=['dpo.beta']", "is not a setting override for one domain"),
    ("+domain_overrides.math=['+domain_overrides.code=[]']", "is not a setting override for one domain"),
])
def test_bad_domain_overrides_are_one_line(per, words):
    from skillweave.core.errors import ConfigError

    with hydra_context(), pytest.raises(ConfigError, match=words):
        compose_config([per])


def test_a_domain_eval_limit_sizes_its_task_and_keys_only_rows_that_use_it(tmp_path, tiny_model_dir):
    from skillweave.app import load_plugins
    from skillweave.core.configurations import eval_limits
    from skillweave.stages.eval import row_ref

    load_plugins()
    base = [*overrides(tmp_path, tiny_model_dir), "domains=[math,code]"]

    def ctx_of(extra):
        ov = [*base, *extra]
        return Context(cfg=compose_config(ov), overrides=replayable(ov), composer=compose_config)

    with hydra_context():
        plain, sized = ctx_of([]), ctx_of(["+domain_overrides.math=['domain.eval_limit=5']"])
        assert eval_limits(plain) == {"math": plain.cfg.eval.limit, "code": plain.cfg.eval.limit}
        assert eval_limits(sized) == {"math": 5, "code": plain.cfg.eval.limit}
        assert row_ref(plain, "base", {}).key != row_ref(sized, "base", {}).key
        # a limit equal to eval.limit given per domain is still a per-domain setting: a new key, said so
        assert "limits" in row_ref(sized, "base", {}).config and "limits" not in row_ref(plain, "base", {}).config


def test_the_paper_table_recipe_plans_each_domain_with_its_own_gain_recipe(tmp_path, tiny_model_dir, fake_vllm_python):
    from skillweave.core.flow import plan_all

    ov = ["recipe=paper_table", "model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={tmp_path}",
          f"model.vllm_python={fake_vllm_python}"]  # its eval serves plain models through vLLM
    with hydra_context():
        ctx = context(compose_config(ov), replayable(ov), compose_config)
        plan_all(ctx)  # every artifact of stage=all, every configuration's inputs: planned, nothing run
        got = {d: (ctx.for_domain(d).domain.eval_task, ctx.for_domain(d).filter.strategy, ctx.for_domain(d).dpo.nll_weight,
                   ctx.for_domain(d).domain.eval_limit) for d in ctx.cfg.domains}
    assert got == {"arith": ("skillweave_arith", "all_pass_fail", 1.0, 500),
                   "code": ("skillweave_codetasks", "reference_vs_fail", 1.0, None),
                   "instructions": ("skillweave_ifeval", "all_pass_fail", 0.0, None),
                   "dialogue": ("skillweave_dialogue", "all_pass_fail", 0.0, 200)}
    assert len(ctx.cfg.eval.configurations) == 13 and ctx.cfg.dpo.nll_weight == 0.0
    ev = ctx.cfg.eval  # skillpacks served by vLLM on their fp path, folded in; the integer path checked by HF
    assert (ev.backend, ev.integer_path, ev.vllm_adapters) == ("vllm", False, "folded")
    assert ev.compare_to == ["base", "dpo", "skillweave"]
    assert "skillweave_intcheck" in ev.configurations and ev.integer_check_docs == 100


def test_the_paper_tables_second_eval_scores_humaneval_and_default_math_on_the_same_artifacts(tmp_path, tiny_model_dir, fake_vllm_python):
    from skillweave.core.flow import planned

    base = ["model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={tmp_path}", f"model.vllm_python={fake_vllm_python}"]
    with hydra_context():
        first, second = (context(compose_config([f"recipe={r}", *base]), replayable([f"recipe={r}", *base]), compose_config)
                         for r in ("paper_table", "paper_table_second_eval"))
        one, two = ({ref.path for ref, _, _ in planned(c)} for c in (first, second))
        tasks = {d: second.for_domain(d).domain.eval_task for d in second.cfg.domains}
    assert tasks == {"arith": "skillweave_math", "code": "skillweave_humaneval",
                     "instructions": "skillweave_ifeval", "dialogue": "skillweave_dialogue"}
    assert second.cfg.stage == "eval" and second.for_domain("arith").domain.eval_limit == 500
    # every trained artifact is the first eval's; only the eval differs
    assert {p.parent.name for p in one ^ two} == {"eval"} and len(one ^ two) == 2
