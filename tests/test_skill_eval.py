"""Stages s2l_shared, s2l_eval and cat_eval on the tiny model: every row of the S2L and CAT comparisons,
paired on the same held-out tasks, each row its own artifact."""

from __future__ import annotations

import json
import textwrap

import pytest
from test_cat import skill_dir
from test_pipeline import run_overrides

from skillweave.core.errors import SkillweaveError
from skillweave.skill import SKILLS

EVAL_SET = '''
from skillweave.skill import load_eval_docs, score_eval_doc


def load_docs(**metadata):
    return load_eval_docs("{NAME}", **metadata)


def process_results(doc, results):
    return score_eval_doc("{NAME}", doc, results)
'''

TASK_YAML = '''
task: skillweave_skill_{NAME}
custom_dataset: !function eval_set.load_docs
test_split: test
output_type: generate_until
num_fewshot: 0
doc_to_text: prompt
doc_to_target: reference
generation_kwargs:
  until: ["<|im_end|>", "<|im_start|>"]
  do_sample: false
  max_gen_toks: 16
process_results: !function eval_set.process_results
metric_list:
{METRICS}
metadata:
  version: 1.0
  n: 20
  with_skill_text: false
'''

IN_CONTEXT_YAML = '''
include: skillweave_skill_{NAME}.yaml
task: skillweave_skill_{NAME}_in_context
metadata:
  version: 1.0
  n: 20
  with_skill_text: true
'''

N = 6


def eval_skill_dir(root, name: str, times: tuple[int, int], checks: list[str]):
    """test_cat's skill folder, with its two lm-eval tasks (20 held-out tasks)."""
    folder = skill_dir(root, name, times, checks)
    (folder / "eval_set.py").write_text(textwrap.dedent(EVAL_SET).format(NAME=name))
    metrics = "\n".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true" for m in ["pass", *checks])
    (folder / f"skillweave_skill_{name}.yaml").write_text(textwrap.dedent(TASK_YAML).format(NAME=name, METRICS=metrics))
    (folder / f"skillweave_skill_{name}_in_context.yaml").write_text(textwrap.dedent(IN_CONTEXT_YAML).format(NAME=name))
    with (folder / "__init__.py").open("a") as f:
        f.write("\nfrom skillweave.skill import register_skill_eval_tasks\n\nregister_skill_eval_tasks(SKILL)\n")
    return folder


@pytest.fixture(scope="module")
def skill_evals(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("skill_eval")
    folders = [eval_skill_dir(root, "ev_first", (2, 0), ["not_truncated", "ev_first_even"]),
               eval_skill_dir(root, "ev_second", (0, 2), ["not_truncated", "ev_second_even"]),
               eval_skill_dir(root, "ev_both", (2, 2), ["not_truncated", "ev_first_even"])]
    ov = ["recipe=tiny", "model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={root / 'artifacts'}",
          f"skill_dirs=[{','.join(map(str, folders))}]", "skills=[ev_first,ev_second]", "task=ev_both",
          "s2l.inputs=6", "s2l.samples_per_input=4", "s2l.max_new_tokens=24", "s2l.steps=3", "s2l.per_device_batch_size=2",
          "s2l.learning_rate=0.02", "lora.rank=4", "cat.examples=8", "cat.batch_size=4", "cat.steps=10", "cat.learning_rate=0.1",
          f"skill_eval.n={N}", "skill_eval.max_gen_toks=16", "skill_eval.batch_size=3"]
    cat = run_overrides([*ov, "stage=cat_eval"])
    s2l = run_overrides([*ov, "stage=s2l_eval"])
    return root, ov, cat, s2l


def results(refs: dict) -> dict:
    (ref,) = [r for name, r in refs.items() if name.split("/")[0] in ("cat_eval", "s2l_eval")]
    return json.loads(ref.file("results").read_text()), ref


def rows(report: dict) -> dict:
    return {r["name"]: r for r in report["configurations"]}


def test_cat_eval_scores_every_combination_on_the_same_tasks(skill_evals):
    report, _ = results(skill_evals[2])
    by = rows(report)
    assert list(by) == ["base", "base_in_context", "single_ev_first", "single_ev_second", "uniform",
                        "peft_linear", "peft_cat", "peft_ties", "mixed", "cat"]
    for r in by.values():
        assert r["n"] == {"ev_both": N} and 0 <= r["scores"]["ev_both"] <= 1
        assert set(r["checks"]["ev_both"]) == {"not_truncated", "ev_first_even"}
        if r["name"] != "base":
            assert r["vs_base"]["ev_both"]["n"] == N
        if r["name"] != "cat":
            assert r["vs_cat"]["ev_both"]["n"] == N


def test_peft_cat_is_the_uniform_sum_answer_for_answer(skill_evals, tmp_path):
    _, ref = results(skill_evals[2])
    read = lambda name: [json.loads(line)["response"] for line in (ref.path / "samples" / f"{name}-ev_both.jsonl").open()]
    assert read("peft_cat") == read("uniform")
    assert read("single_ev_first") != read("base")  # the adapters do move the tiny model


def test_bytes_are_what_each_row_holds(skill_evals):
    by = rows(results(skill_evals[2])[0])
    base = by["base"]["bytes"]
    single = {s: by[f"single_ev_{s}"]["details"]["adapter_bytes"] for s in ("first", "second")}
    assert by["single_ev_first"]["bytes"] == base + single["first"]
    assert by["uniform"]["bytes"] == base + sum(single.values())
    assert by["peft_cat"]["details"]["adapter_bytes"] == sum(single.values())  # rank 2r
    assert by["peft_linear"]["details"]["adapter_bytes"] == single["first"]  # rank r
    alphas = by["cat"]["bytes"] - by["uniform"]["bytes"]
    assert 0 < alphas <= 2 * 4 * 8 * 64 and set(by["cat"]["details"]["mean_alpha"]) == {"ev_first", "ev_second"}


def test_s2l_eval_compares_per_skill_shared_and_in_context(skill_evals):
    report, _ = results(skill_evals[3])
    by = rows(report)
    assert list(by) == ["base", "base_in_context", "s2l", "s2l_in_context", "s2l_int8", "shared"]
    skills = ["ev_first", "ev_second"]
    for s in skills:
        text = len(SKILLS.get(s).text)  # the SKILL.md costs tokens on every request
        assert by["base_in_context"]["prompt_tokens"][s] > by["base"]["prompt_tokens"][s] + text / 8
        assert by["s2l"]["prompt_tokens"][s] == by["base"]["prompt_tokens"][s]
        assert by["s2l"]["tasks"][s] == f"skillweave_skill_{s}" and by["s2l_in_context"]["tasks"][s].endswith("_in_context")
        for name in ("s2l_in_context", "shared"):
            assert by[name]["vs_s2l"][s]["n"] == N
    per_skill = by["s2l"]["details"]["adapter_bytes"]
    assert by["s2l"]["bytes"] == by["base"]["bytes"] + sum(per_skill.values())
    assert by["shared"]["bytes"] == by["base"]["bytes"] + by["shared"]["details"]["adapter_bytes"]
    int8 = by["s2l_int8"]["details"]
    for s in skills:  # an exactly rank-r delta: only quantization error; a quarter of the fp32 bytes, plus scales
        assert int8["max_layer_rel_error"][s] < 0.02
        assert per_skill[s] / 4 < int8["skillpack_bytes"][s] < per_skill[s] / 2
    table = (results(skill_evals[3])[1].file("table")).read_text()
    assert "Paired with base_in_context" in table and "| s2l | no |" in table
    # each check's rate, as a percentage, for every row and skill
    checks = by["s2l"]["checks"]["ev_first"]
    assert set(checks) == {"not_truncated", "ev_first_even"}
    assert f"### ev_first: each check's pass rate (%)\n\n| configuration | {' | '.join(checks)} |" in table
    assert f"| s2l | {' | '.join(f'{100 * v:.0f}' for v in checks.values())} |" in table


def test_rows_are_artifacts_a_rerun_reuses_and_a_lost_one_is_redone(skill_evals):
    root, ov, _, _ = skill_evals
    rows_dir = root / "artifacts" / "skill_eval_rows"
    before = {p.name: p.joinpath("manifest.json").stat().st_mtime_ns for p in rows_dir.iterdir()}
    assert len(before) == 10 + 6  # cat_eval's rows and s2l_eval's (on other tasks: none shared)
    lost = next(p for p in rows_dir.iterdir() if p.name.startswith("shared-"))
    (lost / "manifest.json").unlink()
    _, ref = results(skill_evals[3])
    (ref.path / "manifest.json").unlink()
    run_overrides([*ov, "stage=s2l_eval"])
    after = {p.name: p.joinpath("manifest.json").stat().st_mtime_ns for p in rows_dir.iterdir()}
    assert set(after) == set(before)
    assert [n for n in before if after[n] != before[n]] == [lost.name]


def test_a_killed_row_keeps_the_cells_it_scored(skill_evals, monkeypatch):
    """A row killed after its first skill rescores only the rest; a cell whose samples changed is rescored."""
    from skillweave import skill_eval

    root, ov, _, s2l = skill_evals
    stage = results(s2l)[1].path / "manifest.json"
    (row,) = (root / "artifacts" / "skill_eval_rows").glob("s2l_in_context-*")
    before = json.loads((row / "row.json").read_text())
    for name in ("manifest.json", "row.json", "ev_second.cell.json"):
        (row / name).unlink()  # killed while scoring ev_second
    stage.unlink()
    scored, score = [], skill_eval.score
    monkeypatch.setattr(skill_eval, "score", lambda model, tok, skill, *a: scored.append(skill) or score(model, tok, skill, *a))
    run_overrides([*ov, "stage=s2l_eval"])
    assert scored == ["ev_second"]
    assert json.loads((row / "row.json").read_text())["scores"] == before["scores"]
    with (row / "ev_first.jsonl").open("a") as f:
        f.write("\n")  # samples that no longer match their cell
    (row / "manifest.json").unlink()
    stage.unlink()
    scored.clear()
    run_overrides([*ov, "stage=s2l_eval"])
    assert scored == ["ev_first"]


def test_s2l_shared_trains_one_adapter_on_every_skills_examples(skill_evals):
    root = skill_evals[0]
    (shared,) = (root / "artifacts" / "s2l_shared").iterdir()
    manifest = json.loads((shared / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 2 * 3 and set(manifest["metrics"]["examples_per_skill"]) == {"ev_first", "ev_second"}


@pytest.mark.parametrize("extra, words", [
    (["stage=cat_eval", "task=ev_first"], "other than task=ev_first"),
    (["stage=cat_eval", "task=nope"], "task"),
    (["stage=s2l_eval", "skills=[ev_first,ev_first]"], "distinct skills"),
    (["stage=s2l_shared", "skills=[ev_first]"], "two or more"),
    (["stage=s2l_shared", "s2l.training=dpo"], "s2l.training=sft"),
    (["stage=s2l_eval", "skill_eval.n=0"], "skill_eval.n"),
    (["stage=s2l_eval", "skill_eval.backend=auto"], "skill_eval.backend=auto: choose"),
    (["stage=cat_eval", "skill_eval.backend=vllm", "model.vllm_python=/nonexistent/python"],
     "skill_eval.backend=vllm: no vLLM environment"),
])
def test_bad_skill_eval_input_is_one_line(skill_evals, extra, words):
    _, ov, _, _ = skill_evals
    with pytest.raises(SkillweaveError, match=words.replace("[", r"\[")) as e:
        run_overrides([*ov, *extra])
    assert "\n" not in str(e.value)


def test_a_skill_eval_tasks_texts_are_the_docs_it_scores(skill_evals):
    """The contamination check reads every registered eval task's texts: a skill whose eval split holds
    fewer than 200 tasks says so in its YAML (n: 20), and only those are read."""
    from skillweave.eval_tasks import EVAL_TASKS

    texts = EVAL_TASKS.get("skillweave_skill_ev_both").eval_texts()
    assert len(texts) == 20 == len(set(texts))


def test_s2l_eval_through_vllm_serves_what_it_can_and_answers_as_hf(skill_evals, fake_vllm_python):
    """skill_eval.backend=vllm: the backbone and the S2L LoRAs (folded in) through the engine, the INT8 row on
    its integer path by HF; the fake engine decodes as transformers does, so every answer is the HF row's.
    Last in this file: its rows join the module's artifacts root, which the tests above count."""
    _, ov, _, hf_refs = skill_evals
    vllm_refs = run_overrides([*ov, "stage=s2l_eval", "skill_eval.backend=vllm", f"model.vllm_python={fake_vllm_python}",
                               "model.generation_backend=hf"])
    (report, vllm), (hf_report, hf) = results(vllm_refs), results(hf_refs)
    served = {name: r["details"]["served_by"] for name, r in rows(report).items()}
    assert served["base"] == served["base_in_context"] == {"ev_first": "vllm 0.0+fake", "ev_second": "vllm 0.0+fake"}
    assert served["s2l"] == served["shared"] == {"ev_first": "vllm 0.0+fake, folded", "ev_second": "vllm 0.0+fake, folded"}
    assert served["s2l_int8"] == {"ev_first": "hf", "ev_second": "hf"}
    assert "served_by" not in rows(hf_report)["s2l"]["details"]
    for name in rows(report):
        assert rows(report)[name]["row"] != rows(hf_report)[name]["row"]  # keyed by the backend
        for skill in ("ev_first", "ev_second"):
            answers = [(r.path / "samples" / f"{name}-{skill}.jsonl").read_text() for r in (vllm, hf)]
            assert answers[0] == answers[1], (name, skill)
