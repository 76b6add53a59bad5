"""All stages end to end on a tiny model, and the properties each stage must hold."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import WORDS

from compose import compose_config, hydra_context
from skillweave.app import run
from skillweave.core.compose import replayable
from skillweave.core.artifacts import MissingArtifactError
from skillweave.models import load_state_dict
from skillweave.prompts import PROMPT_SOURCES
from skillweave.rules.common import RuleResult, rule
from skillweave.deltas import load_delta


@rule("test_even_word_count")
def even_word_count(sample) -> RuleResult:
    """A rule a random tiny model passes about half the time, so every domain gets pairs."""
    n = len(sample["response"].split())
    return RuleResult(n % 2 == 0, float(n % 2 == 0), f"{n} words")


@PROMPT_SOURCES.register("test_short_prompts")
def short_prompts(n: int, seed: int) -> list[dict]:
    """Prompts like the tiny model's training chats, which it answers briefly and ends."""
    return [{"id": f"p{seed}-{i}", "prompt": f"say {w} and {w}", "meta": {"answer": "1"}} for i, w in enumerate(WORDS[:n])]


def overrides(tmp_path, model_dir, *extra: str) -> list[str]:
    rules = tmp_path / "test_rules.yaml"
    rules.write_text("rules:\n  - name: not_truncated\n  - name: test_even_word_count\n")
    return [
        "recipe=tiny",
        "model=hf_dir",
        f"model.path={model_dir}",
        f"artifacts_root={tmp_path / 'artifacts'}",
        f"domain.rules={rules}",
        "domain.prompt_source.name=test_short_prompts",
        *extra,
    ]


def run_overrides(ov: list[str]) -> dict:
    with hydra_context():
        cfg = compose_config(ov)
        return run(cfg, replayable(ov), compose_config)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("pipeline")
    ov = overrides(tmp, tiny_model_dir)
    return tmp, ov, run_overrides(ov)


def test_every_stage_completes(pipeline):
    _, _, refs = pipeline
    expected = {f"{s}/{d}" for s in ("generate", "filter", "dpo", "zip") for d in ("math", "code", "instructions")}
    assert set(refs) == expected | {"merge", "eval"}
    assert all(ref.complete for ref in refs.values())


def test_dry_run_says_where_a_run_stands_and_runs_nothing(pipeline, tmp_path, capsys):
    _, ov, refs = pipeline
    capsys.readouterr()
    assert run_overrides([*ov, "dry_run=true"]) == {}
    lines = capsys.readouterr().out.strip().splitlines()
    made = {str(r.path.relative_to(r.root)) for r in refs.values()}
    assert {line.split()[-1] for line in lines[:-1]} == made and all(line.startswith("complete") for line in lines[:-1])
    seconds = sum(r.manifest()["seconds_all_runs"] for r in refs.values())
    assert lines[-1].startswith(f"{len(made)} complete ({seconds:.0f} s by their manifests), 0 partial (0 s so far), "
                                "0 missing")
    # the same command on a new root: nothing there, and a stopped run's directory is partial, with what it holds
    fresh = [o for o in ov if not o.startswith("artifacts_root=")] + [f"artifacts_root={tmp_path / 'new'}"]
    shards = tmp_path / "new" / next(p for p in made if p.startswith("generate/")) / "shards"
    shards.mkdir(parents=True)
    (shards / "00000.jsonl").write_text("")
    run_overrides([*fresh, "dry_run=true"])
    lines = capsys.readouterr().out.strip().splitlines()
    states = [line.split()[0] for line in lines[:-1]]
    assert states.count("partial") == 1 and states.count("missing") == len(made) - 1
    assert next(line for line in lines if line.startswith("partial")).endswith("(1 batches written)")
    order = [line.split()[-1].split("/")[0] for line in lines if line.startswith("missing")]
    assert order.index("filter") < order.index("dpo") < order.index("merge") < order.index("eval")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["generate"]  # nothing written
    # a stopped eval: the rows it finished are listed
    root = tmp_path / "copy"
    shutil.copytree(refs["eval"].root, root)
    (root / refs["eval"].path.relative_to(refs["eval"].root) / "manifest.json").unlink()
    run_overrides([o for o in ov if not o.startswith("artifacts_root=")] + [f"artifacts_root={root}", "dry_run=true"])
    partial = [line for line in capsys.readouterr().out.splitlines() if line.startswith("partial")]
    assert len(partial) == 1 and partial[0].endswith("(4 of 4 rows complete)")
    # rows made by another process (an eval of some configurations) before this eval's own directory exists
    shutil.rmtree(root / refs["eval"].path.relative_to(refs["eval"].root))
    for row in (root / "eval_rows").glob("merged-*"):
        (row / "manifest.json").unlink()
    run_overrides([o for o in ov if not o.startswith("artifacts_root=")] + [f"artifacts_root={root}", "dry_run=true"])
    partial = [line for line in capsys.readouterr().out.splitlines() if line.startswith("partial")]
    assert len(partial) == 1 and partial[0].endswith("(3 of 4 rows complete; merged: math, code, instructions)")


def test_rerun_is_a_no_op(pipeline, caplog):
    _, ov, refs = pipeline
    before = {k: (r.path / "manifest.json").stat().st_mtime_ns for k, r in refs.items()}
    with caplog.at_level("INFO", logger="skillweave"):
        again = run_overrides(ov)
    assert {k: r.key for k, r in again.items()} == {k: r.key for k, r in refs.items()}
    assert {k: (r.path / "manifest.json").stat().st_mtime_ns for k, r in again.items()} == before
    assert caplog.text.count("nothing to do") == len(refs)


def test_samples_and_pairs(pipeline):
    _, _, refs = pipeline
    rows = [json.loads(line) for line in (refs["generate/math"].path / "samples.jsonl").open()]
    assert len(rows) == 4 * 4 and {r["sample"] for r in rows} == {0, 1, 2, 3}
    report = json.loads((refs["filter/math"].path / "report.json").read_text())
    assert report["samples"] == 16 and report["pairs"] >= 1
    from datasets import load_from_disk

    pairs = load_from_disk(str(refs["filter/math"].path / "pairs"))
    assert len(pairs) == report["pairs"]
    by_id = {(r["prompt_id"], r["response"]): r for r in rows}
    for p in pairs:
        chosen = by_id[(p["prompt_id"], p["chosen"][0]["content"])]
        assert not chosen["truncated"]  # a truncated answer is never chosen
        assert len(chosen["response"].split()) % 2 == 0
        assert p["chosen"][0]["content"] != p["rejected"][0]["content"]


def test_delta_is_fine_tuned_minus_base(pipeline, tiny_model_dir):
    _, _, refs = pipeline
    manifest = refs["dpo/math"].manifest()
    base = load_state_dict(tiny_model_dir)
    delta = load_delta(refs["dpo/math"].file("delta"))
    assert set(delta) == set(base)
    assert manifest["metrics"]["steps"] == 2 and manifest["metrics"]["relative_weight_change"] > 0
    norm = sum(float(t.double().pow(2).sum()) for t in delta.values()) ** 0.5
    base_norm = sum(float(t.double().pow(2).sum()) for t in base.values()) ** 0.5
    assert norm / base_norm == pytest.approx(manifest["metrics"]["relative_weight_change"], rel=1e-6)


def test_merged_backbone_plus_residual_is_the_fine_tuned_model(pipeline, tiny_model_dir):
    _, _, refs = pipeline
    base = load_state_dict(tiny_model_dir)
    backbone = load_state_dict(refs["merge"].file("backbone"))
    shared = load_delta(refs["merge"].file("shared_delta"))
    for d in ("math", "code", "instructions"):
        delta = load_delta(refs[f"dpo/{d}"].file("delta"))
        for k in base:
            fine_tuned = base[k] + delta[k]
            rebuilt = backbone[k] + (delta[k] - shared[k])
            torch.testing.assert_close(rebuilt, fine_tuned, rtol=0, atol=4e-7 * max(1.0, float(fine_tuned.abs().max())))


def test_eval_writes_results_for_every_configuration(pipeline):
    _, _, refs = pipeline
    results = json.loads((refs["eval"].path / "results.json").read_text())
    names = [r["name"] for r in results["configurations"]]
    assert names == ["base", "dpo", "merged", "skillweave"]
    by_name = {r["name"]: r for r in results["configurations"]}
    assert by_name["dpo"]["bytes"] == 3 * by_name["base"]["bytes"]  # K separate models
    assert by_name["merged"]["bytes"] == by_name["base"]["bytes"]
    assert by_name["base"]["bytes"] < by_name["skillweave"]["bytes"] < by_name["dpo"]["bytes"]
    for r in results["configurations"]:
        assert set(r["scores"]) == {"math", "code", "instructions"}
        assert all(0.0 <= s <= 1.0 for s in r["scores"].values())
    table = (refs["eval"].path / "results.md").read_text()
    assert all(f"| {n} |" in table for n in names)


def test_a_stage_alone_names_the_command_for_its_missing_input(tmp_path, tiny_model_dir):
    ov = overrides(tmp_path, tiny_model_dir, "stage=dpo", "domain=code")
    with pytest.raises(MissingArtifactError, match=r"run `python -m skillweave stage=filter domain=code recipe=tiny"):
        run_overrides(ov)


def test_a_killed_generate_resumes_with_identical_samples(pipeline, tmp_path, tiny_model_dir):
    _, _, refs = pipeline
    ov = overrides(tmp_path, tiny_model_dir, "stage=generate", "domain=code", "domain.sampling.batch_size=2")
    first = run_overrides(ov)
    (ref,) = first.values()
    samples = (ref.path / "samples.jsonl").read_text()
    # Simulate a kill after the first batch: no manifest, no samples file, one shard left.
    for name in ("manifest.json", "samples.jsonl", "shards/00001.jsonl"):
        (ref.path / name).unlink()
    again = run_overrides(ov)
    assert (ref.path / "samples.jsonl").read_text() == samples
    assert list(again.values())[0].complete


def test_a_killed_dpo_resumes_from_its_checkpoint(pipeline, tmp_path, tiny_model_dir, monkeypatch, capsys):
    import trl
    from transformers import TrainerCallback

    _, _, refs = pipeline
    ov = overrides(tmp_path, tiny_model_dir, "domain=math", "dpo.save_steps=1")
    for stage in ("generate", "filter"):
        run_overrides([*ov, f"stage={stage}"])

    class KillAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise KeyboardInterrupt("preempted")

    class PreemptedDPOTrainer(trl.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAfterFirstCheckpoint())

    monkeypatch.setattr(trl, "DPOTrainer", PreemptedDPOTrainer)
    with pytest.raises(KeyboardInterrupt):
        run_overrides([*ov, "stage=dpo"])
    (partial,) = (tmp_path / "artifacts" / "dpo").iterdir()
    assert not (partial / "manifest.json").exists() and (partial / "checkpoints" / "checkpoint-1").is_dir()
    # Killed again while saving step 2's checkpoint: its config is there, its weights half written.
    torn = partial / "checkpoints" / "checkpoint-2"
    torn.mkdir()
    shutil.copy(partial / "checkpoints" / "checkpoint-1" / "config.json", torn)
    (torn / ".model.safetensors.tmp").write_bytes((partial / "checkpoints" / "checkpoint-1" / "model.safetensors").read_bytes()[:1000])
    capsys.readouterr()
    run_overrides([*ov, "stage=dpo", "dry_run=true"])  # reads only: the torn checkpoint stays for the run to delete
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("partial")]
    assert line.endswith("(checkpointed at step 1)") and torn.is_dir()
    killed_run = float(line.split()[1])  # the killed run's time, by its clock

    steps_run = []

    class CountSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_run.append(state.global_step)

    class CountingDPOTrainer(trl.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(CountSteps())

    monkeypatch.setattr(trl, "DPOTrainer", CountingDPOTrainer)
    (ref,) = run_overrides([*ov, "stage=dpo"]).values()
    assert steps_run == [2]  # resumed at step 1's checkpoint (the torn one deleted), not restarted
    assert ref.path == partial and ref.complete and ref.manifest()["metrics"]["steps"] == 2
    manifest = ref.manifest()  # the cost is both runs', not the last one's alone
    assert manifest["runs"] == 2
    assert manifest["seconds_all_runs"] == pytest.approx(manifest["seconds"] + killed_run, abs=1)
    assert not (partial / "checkpoints").exists()
    # And the resumed run ends where an uninterrupted one does (save_steps aside, the same config).
    uninterrupted = load_delta(refs["dpo/math"].file("delta"))
    for k, v in load_delta(partial / "delta.safetensors").items():
        torch.testing.assert_close(v, uninterrupted[k], rtol=1e-4, atol=1e-7)


def test_nll_weight_adds_the_chosen_answers_nll_to_the_dpo_loss(pipeline, monkeypatch):
    """dpo.nll_weight > 0 is RPO: trl's DPO loss plus the weighted chosen NLL, in its own artifact; at 0
    the key is the one plain DPO had before the setting existed."""
    import trl

    _, ov, refs = pipeline
    seen = []

    class RecordingDPOTrainer(trl.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append((list(self.args.loss_type), self.args.loss_weights))

    monkeypatch.setattr(trl, "DPOTrainer", RecordingDPOTrainer)
    (rpo,) = run_overrides([*ov, "stage=dpo", "domain=math", "dpo.nll_weight=1.0"]).values()
    plain = refs["dpo/math"]
    assert seen == [(["sigmoid", "sft"], [1.0, 1.0])]
    assert rpo.key != plain.key and "nll_weight" not in plain.config["dpo"]
    # The first step's loss is DPO's log 2 plus the chosen answers' NLL (a few nats for a tiny random model).
    assert plain.manifest()["metrics"]["first_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert rpo.manifest()["metrics"]["first_loss"] > 0.6931 + 1.0
    (same,) = run_overrides([*ov, "stage=dpo", "domain=math", "dpo.nll_weight=0.0"]).values()
    assert same.key == plain.key and len(seen) == 1  # found complete: nothing trained


def test_the_checkpoint_interval_keys_no_training_artifact(tmp_path, tiny_model_dir):
    from skillweave import stages  # noqa: F401  (registers the stages)
    from skillweave.core.engine import Context, ref_for

    def keys(*extra: str) -> dict[str, str]:
        ov = overrides(tmp_path, tiny_model_dir, "eval.configurations=[multitask,lora]", *extra)
        with hydra_context():
            ctx = Context(cfg=compose_config(ov), overrides=replayable(ov), composer=compose_config)
            return {s: ref_for(ctx, s, "math").key for s in ("dpo", "lora", "dpo_multitask")}

    assert keys("dpo.save_steps=5") == keys() != keys("dpo.max_steps=5")


def test_eval_key_covers_the_settings_its_configurations_read(tmp_path, tiny_model_dir):
    from skillweave import stages  # noqa: F401  (registers the stages and eval configurations)
    from skillweave.core.engine import Context, ref_for

    def key(*extra: str) -> str:
        ov = overrides(tmp_path, tiny_model_dir, *extra)
        with hydra_context():
            ctx = Context(cfg=compose_config(ov), overrides=replayable(ov), composer=compose_config)
            return ref_for(ctx, "eval").key

    # twin_merging compresses at zip.rank itself (none of its inputs does): a new rank is a new eval
    assert key("eval.configurations=[twin_merging]", "zip.rank=4") != key("eval.configurations=[twin_merging]", "zip.rank=8")
    # base reads no such setting: its eval is reused
    assert key("eval.configurations=[base]", "zip.rank=4") == key("eval.configurations=[base]", "zip.rank=8")


def _count_runs(monkeypatch, names) -> list[str]:
    """Wraps the named eval configurations so that each run is recorded in the returned list."""
    from skillweave.core.configurations import CONFIGURATIONS

    ran = []
    for name in names:
        conf = CONFIGURATIONS.get(name)
        monkeypatch.setitem(
            CONFIGURATIONS._items, name,
            conf.__class__(needs=conf.needs, settings=conf.settings,
                           run=lambda ctx, i, s, _n=name, _r=conf.run: (ran.append(_n), _r(ctx, i, s))[1]),
        )
    return ran


def test_a_killed_eval_resumes_at_its_first_unfinished_configuration(pipeline, monkeypatch):
    tmp, ov, refs = pipeline
    ref = refs["eval"]
    before = json.loads((ref.path / "results.json").read_text())
    rows = {r["name"]: tmp / "artifacts" / r["row"] for r in before["configurations"]}
    assert set(rows) == {"base", "dpo", "merged", "skillweave"}  # one artifact per finished configuration
    assert all((p / "manifest.json").is_file() and (p / "samples").is_dir() for p in rows.values())
    # Kill after the first two: their rows stay, the rest and the manifest are gone.
    for name in ("merged", "skillweave"):
        (rows[name] / "manifest.json").unlink()
    (ref.path / "manifest.json").unlink()
    ran = _count_runs(monkeypatch, rows)
    run_overrides([*ov, "stage=eval"])
    assert ran == ["merged", "skillweave"]
    assert json.loads((ref.path / "results.json").read_text())["configurations"] == before["configurations"]


def test_an_eval_leaves_a_row_another_job_is_making_for_last(pipeline, monkeypatch):
    """Two evals sharing rows (a second process beside the main run, tasks of a sweep) do not queue behind
    each other: a row another job holds is made last (here by this eval, as the other job stops without
    finishing it), the other rows first; the table keeps the configured order."""
    import threading
    import time
    from types import SimpleNamespace

    from skillweave.core.artifacts import artifact_lock

    tmp, ov, refs = pipeline
    ref = refs["eval"]
    before = json.loads((ref.path / "results.json").read_text())
    rows = {r["name"]: tmp / "artifacts" / r["row"] for r in before["configurations"]}
    for name in ("merged", "skillweave"):
        (rows[name] / "manifest.json").unlink()
    (ref.path / "manifest.json").unlink()
    held = threading.Event()

    def other_job() -> None:  # holds merged's row until skillweave's is made (or a minute passes)
        with artifact_lock(SimpleNamespace(path=rows["merged"])):
            held.set()
            deadline = time.time() + 60
            while time.time() < deadline and not (rows["skillweave"] / "manifest.json").is_file():
                time.sleep(0.05)

    thread = threading.Thread(target=other_job)
    thread.start()
    held.wait(10)
    ran = _count_runs(monkeypatch, rows)
    run_overrides([*ov, "stage=eval"])
    thread.join()
    assert ran == ["skillweave", "merged"]
    assert json.loads((ref.path / "results.json").read_text())["configurations"] == before["configurations"]


def test_an_eval_scores_the_rows_whose_inputs_exist_while_another_job_makes_one(pipeline, tmp_path, monkeypatch):
    """The paper table's two processes: one trains the multitask DPO while the other's eval (stage=all) scores
    the rows that do not read it instead of waiting on it, then waits for it (here makes it, as the other job
    stops without finishing) and scores the multitask row."""
    from dataclasses import replace

    from other_job import hold_as_another_job, stop

    from skillweave.core.configurations import CONFIGURATIONS
    from skillweave.core.engine import STAGES, Context, ref_for

    tmp, ov, _ = pipeline
    shutil.copytree(tmp / "artifacts", tmp_path / "artifacts")  # the rows this makes stay out of the module's
    ov = [o for o in ov if not o.startswith("artifacts_root=")] + [
        f"artifacts_root={tmp_path / 'artifacts'}", "eval.configurations=[base,dpo,multitask]",
        "eval.compare_to=[base]", "eval.limit=1"]  # new base and dpo rows, made while the multitask DPO is held
    ran, other_job = [], {}
    for name in ("base", "dpo", "multitask"):
        conf = CONFIGURATIONS.get(name)

        def run(ctx, inputs, scorer, _name=name, _run=conf.run):
            ran.append(_name)
            if _name == "dpo":
                stop(other_job)
            return _run(ctx, inputs, scorer)

        monkeypatch.setitem(CONFIGURATIONS._items, name,
                            conf.__class__(needs=conf.needs, settings=conf.settings, run=run))
    multitask = STAGES.get("dpo_multitask")
    monkeypatch.setitem(STAGES._items, "dpo_multitask",
                        replace(multitask, run=lambda *a: (ran.append("dpo_multitask"), multitask.run(*a))[1]))
    with hydra_context():
        ctx = Context(cfg=compose_config(ov), overrides=replayable(ov), composer=compose_config)
        held = ref_for(ctx, "dpo_multitask")
    hold_as_another_job(monkeypatch, held, other_job)
    refs = run_overrides(ov)
    assert ran == ["base", "dpo", "dpo_multitask", "multitask"]
    results = json.loads(refs["eval"].file("results").read_text())
    assert [c["name"] for c in results["configurations"]] == ["base", "dpo", "multitask"]
    assert refs["eval"].manifest()["runs"] == 2 and refs["eval-input/dpo_multitask"].complete


def test_another_comparison_reuses_the_rows_it_shares_and_pairs_them_with_base(pipeline, monkeypatch):
    tmp, ov, refs = pipeline
    ran = _count_runs(monkeypatch, ["base", "dpo", "merged", "skillweave"])
    run_overrides([*ov, "stage=eval", "eval.configurations=[base,skillweave]"])
    assert ran == []  # both rows exist from the full comparison: a new eval artifact, nothing recomputed
    results = [json.loads(p.read_text()) for p in (tmp / "artifacts" / "eval").glob("all-*/results.json")]
    pair = next(r for r in results if [c["name"] for c in r["configurations"]] == ["base", "skillweave"])
    vs = pair["configurations"][1]["vs_base"]["math"]
    # The paired difference is the difference of the two means over the same documents.
    scores = {c["name"]: c["scores"]["math"] for c in pair["configurations"]}
    assert vs["delta"] == pytest.approx(scores["skillweave"] - scores["base"])
    assert vs["n"] == pair["configurations"][0]["n"]["math"] and 0.0 <= vs["changed"] <= 1.0


def test_an_experiment_folder_collects_the_report_and_every_manifest_behind_it(pipeline, tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("collect", Path(__file__).parents[1] / "experiments" / "collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    _, _, refs = pipeline
    collect.collect(refs["eval"].path, tmp_path / "exp")
    manifests = json.loads((tmp_path / "exp" / "manifests.json").read_text())
    assert {"eval/all", "eval_rows/base", "eval_rows/skillweave", "merge/all", "zip/math", "dpo/math", "filter/code",
            "generate/instructions"} <= set(manifests)
    assert manifests["dpo/math"]["metrics"]["pairs"] >= 1
    assert {p.name for p in (tmp_path / "exp").iterdir()} == {"results.json", "results.md", "frontier.png", "domains.png",
                                                             "paired_base.png", "manifests.json"}
    # A run that stopped at the dev split (no eval) is collected from its dpo artifact: manifests only.
    collect.collect(refs["dpo/math"].path, tmp_path / "dev_only")
    manifests = json.loads((tmp_path / "dev_only" / "manifests.json").read_text())
    assert {"dpo/math", "filter/math", "generate/math"} <= set(manifests) and "eval/all" not in manifests
    assert {p.name for p in (tmp_path / "dev_only").iterdir()} == {"manifests.json"}


@pytest.mark.parametrize(
    "damage, complete",
    [
        (None, True),
        ("state_missing", False),  # killed before the Trainer wrote trainer_state.json (its last file)
        ("state_torn", False),  # trainer_state.json itself half written
        ("state_other_step", False),  # a state that is not this checkpoint's
        ("hidden_tmp", False),  # a write left half done
        ("weights_truncated", False),  # a full disk: shorter than its header says
    ],
)
def test_checkpoint_is_complete_only_when_written_to_the_end(tmp_path, damage, complete):
    from safetensors.torch import save_file

    from skillweave.training import checkpoint_is_complete, last_complete_checkpoint

    ckpts = tmp_path / "checkpoints"
    for step in (1, 2):
        path = ckpts / f"checkpoint-{step}"
        path.mkdir(parents=True)
        save_file({"w": torch.ones(4, 4)}, str(path / "model.safetensors"))
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    last = ckpts / "checkpoint-2"
    if damage == "state_missing":
        (last / "trainer_state.json").unlink()
    elif damage == "state_torn":
        (last / "trainer_state.json").write_text('{"global_st')
    elif damage == "state_other_step":
        (last / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    elif damage == "hidden_tmp":
        (last / ".optimizer.pt.tmp").write_bytes(b"\0" * 10)
    elif damage == "weights_truncated":
        data = (last / "model.safetensors").read_bytes()
        (last / "model.safetensors").write_bytes(data[:-8])
    assert checkpoint_is_complete(last) is complete
    assert last_complete_checkpoint(ckpts) == (last if complete else ckpts / "checkpoint-1")
    assert last.exists() is complete  # an incomplete checkpoint is deleted


def test_nothing_writes_into_a_finished_artifact(pipeline):
    """Every file of every artifact is one its manifest lists: no cache files (datasets writes them beside a
    dataset it transforms), no leftover temporary files."""
    _, _, refs = pipeline
    for ref in refs.values():
        on_disk = {str(p.relative_to(ref.path)) for p in ref.path.rglob("*") if p.is_file()}
        assert on_disk - {"manifest.json", ".lock"} == set(ref.manifest()["files"]), ref


@pytest.mark.parametrize(
    "stage, label, output, consumer",
    [
        ("generate", "math", "samples", "filter"),
        ("filter", "math", "scored", "dpo"),  # a file of the pairs' stage the consumer does not even read
        ("dpo", "math", "delta", "merge"),
        ("merge", None, "shared_delta", "zip"),
        ("zip", "math", "skillpack", "eval"),
    ],
)
def test_a_corrupted_artifact_is_refused_with_the_command_that_redoes_it(pipeline, tmp_path, stage, label, output, consumer):
    """Flipped bytes in any stage's output (same size: only the digest sees it) stop the stage that reads
    it, in one line that names the damaged file and the command that redoes it; skillweave-verify finds it."""
    from skillweave.core.errors import ArtifactError
    from skillweave.verify import verify

    tmp, ov, refs = pipeline
    store = tmp_path / "artifacts"
    shutil.copytree(tmp / "artifacts", store)
    ov = [o for o in ov if not o.startswith("artifacts_root=")] + [f"artifacts_root={store}"]
    ref = refs[f"{stage}/{label}" if label else stage]
    damaged = store / ref.stage / ref.path.name / ref.outputs[output]
    target = damaged if damaged.is_file() else next(p for p in sorted(damaged.rglob("*")) if p.is_file())
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    for r in refs.values():  # the consumer must run again, reading the damaged input
        if r.stage in (consumer, "eval_rows"):
            shutil.rmtree(store / r.stage / r.path.name, ignore_errors=True)
    shutil.rmtree(store / "eval_rows", ignore_errors=True)
    shutil.rmtree(store / "eval_cells", ignore_errors=True)
    with pytest.raises(ArtifactError) as info:
        run_overrides([*ov, f"stage={consumer}", *([f"domain={label}"] if label else [])])
    message = str(info.value)
    assert f"{ref.stage}/{ref.path.name}: damaged" in message and "differs from what was written (sha256)" in message
    redo = f"delete {store / ref.stage / ref.path.name} and run `python -m skillweave stage={stage}"
    assert redo in message and message.endswith(f"artifacts_root={store}`") and "\n" not in message
    assert any(name == f"{ref.stage}/{ref.path.name}" for name, _, _ in verify(store))


def test_an_eval_that_changes_one_domain_rescores_that_domain_only(pipeline, tmp_path, monkeypatch):
    """Each (configuration, domain) score is its own artifact: a new limit for math re-scores math in every
    row and reuses the other domains' scores; the row's table holds both."""
    from skillweave.stages import eval as eval_stage

    tmp, ov, refs = pipeline
    store = tmp_path / "artifacts"
    shutil.copytree(tmp / "artifacts", store)
    ov = [o for o in ov if not o.startswith("artifacts_root=")] + [f"artifacts_root={store}"]
    calls, evaluate = [], eval_stage.evaluate
    monkeypatch.setattr(eval_stage, "evaluate", lambda *a, **k: calls.append((tuple(a[2]), k["limit"])) or evaluate(*a, **k))
    (ref,) = [r for name, r in run_overrides([*ov, "stage=eval", "+domain_overrides.math=['domain.eval_limit=1']"]).items()
              if name.split("/")[0] == "eval"]
    rows = json.loads(ref.file("results").read_text())["configurations"]
    before = {r["name"]: r for r in json.loads(refs["eval"].file("results").read_text())["configurations"]}
    assert calls and set(calls) == {(("skillweave_math",), 1)} and len(calls) == len(rows)
    for r in rows:
        assert r["n"]["math"] == 1 and r["row"] != before[r["name"]]["row"]
        assert {d: r["scores"][d] for d in ("code", "instructions")} == {d: before[r["name"]]["scores"][d] for d in ("code", "instructions")}
