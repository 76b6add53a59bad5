"""Stage s2l on the tiny model: a skill folder (outside the package) becomes a LoRA skillpack; the teacher
writes with the SKILL.md in context, the student trains on the inputs alone (context distillation)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from test_pipeline import run_overrides

from skillweave.core.errors import SkillweaveError

SKILL_MD = """\
---
name: say_twice
description: Repeat the word the user gives, twice, and nothing else.
---
1. Find the word in the request.
2. Answer with the word twice, separated by one space.

Example: "say yes" -> "yes yes"
"""

INIT = '''
import random
from pathlib import Path

from skillweave.rules import RuleResult, rule
from skillweave.skill import generated_tasks, register_skill

WORDS = "the a one two three four five six seven eight nine zero def return print add sum list yes no".split()


def draw(rng: random.Random, split: str):
    word = rng.choice(WORDS[:14] if split == "train" else WORDS[14:])
    return f"say {word} and {word}", {"word": word}


@rule("say_twice_even_words")
def even_words(sample) -> RuleResult:
    """Permissive on purpose: the random tiny model passes about half the time."""
    n = len(sample["response"].split())
    return RuleResult(n % 2 == 0, float(n % 2 == 0), f"{n} words")


SKILL = register_skill(Path(__file__).parent, generated_tasks("say_twice", draw), ["not_truncated", "say_twice_even_words"],
                       lambda task: f"{task['meta']['word']} {task['meta']['word']}")
'''


@pytest.fixture(scope="module")
def skill_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("s2l")
    folder = root / "say_twice"
    folder.mkdir()
    (folder / "SKILL.md").write_text(SKILL_MD)
    (folder / "__init__.py").write_text(textwrap.dedent(INIT))
    ov = ["recipe=tiny", "model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={root / 'artifacts'}",
          f"skill_dirs=[{folder}]", "skill=say_twice", "stage=s2l", "s2l.inputs=6", "s2l.samples_per_input=4",
          "s2l.max_new_tokens=48", "s2l.steps=3", "s2l.per_device_batch_size=2", "lora.rank=4"]
    (ref,) = run_overrides(ov).values()
    return root, ov, ref


def test_the_teacher_writes_with_the_skill_text_and_the_checks_keep_what_follows_it(skill_run):
    _, _, ref = skill_run
    answers = [json.loads(line) for line in (ref.path / "examples.jsonl").read_text().splitlines()]
    metrics = ref.manifest()["metrics"]
    assert metrics["written"] == len(answers) == 6 * 4
    kept = [a for a in answers if a["passed"]]
    assert metrics["kept"] == len({(a["input_id"], a["response"]) for a in kept}) > 0
    assert sum(metrics["rejected_by"].values()) == len(answers) - len(kept)
    assert set(metrics["rejected_by"]) <= {"truncated", "say_twice_even_words"}
    assert all(a["passed"] == (not a["truncated"] and all(r["passed"] for r in a["rules"].values())) for a in answers)
    assert metrics["quantization"] == "none (plain LoRA)" and metrics["steps"] == 3  # CPU: no bitsandbytes
    # s2l.precision=auto: bf16 autocast where native, keyed only when it is not (keys made before the setting were bf16)
    from skillweave.models import native_bf16

    native = native_bf16()
    assert metrics["precision"] == ("bfloat16" if native else "float32")
    assert ref.config.get("precision") == (None if native else "float32")


def test_the_student_trains_on_the_inputs_alone(skill_run):
    """Context distillation: the training prompts are the bare inputs; the SKILL.md is never in them."""
    _, _, ref = skill_run
    rows = [json.loads(line) for line in ref.file("train").read_text().splitlines()]
    assert rows and all(r["prompt"].startswith("say ") and "Repeat the word" not in r["prompt"] for r in rows)
    kept = {a["response"] for a in map(json.loads, (ref.path / "examples.jsonl").read_text().splitlines()) if a["passed"]}
    assert {r["completion"] for r in rows} == kept


def test_the_adapter_is_a_stamped_skillpack_of_this_backbone(skill_run, tiny_model_dir):
    from skillweave.lora_io import adapter_tensors, load_lora, lora_dense_delta
    from skillweave.models import load_model, model_fingerprint

    _, _, ref = skill_run
    adapter = ref.file("adapter")
    stamp = json.loads((adapter / "skillweave.json").read_text())
    assert stamp["kind"] == "s2l" and stamp["skill"] == "say_twice"
    assert ref.label == "say_twice" and ref.manifest()["metrics"]["adapter_bytes"] == sum(
        t.numel() * t.element_size() for t in adapter_tensors(adapter).values())
    delta = lora_dense_delta(adapter)
    assert delta and all(float(t.abs().max()) > 0 for t in delta.values())  # trained: B moved from zero
    model = load_lora(load_model(tiny_model_dir), adapter, model_fingerprint(tiny_model_dir))
    ids = torch.tensor([[5, 17, 42, 99]])
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size


def test_a_rerun_reuses_it_and_another_skill_setting_makes_another(skill_run):
    _, ov, ref = skill_run
    (again,) = run_overrides(ov).values()
    assert again == ref
    (other,) = run_overrides([*ov, "s2l.seed=1", "s2l.steps=1"]).values()
    assert other.key != ref.key and other.complete


@pytest.mark.parametrize(
    "extra, words",
    [
        (["skill="], "stage=s2l needs skill=<name>"),
        (["skill=say_twise"], "skill=say_twise: unknown skill 'say_twise'. Did you mean 'say_twice'?"),
        (["s2l.samples_per_input=1"], "s2l.samples_per_input must be >= 2"),
        (["s2l.teacher=/no/such/model"], "s2l.teacher=/no/such/model does not exist"),
    ],
)
def test_bad_s2l_input_is_one_line(skill_run, tmp_path, extra, words):
    _, ov, _ = skill_run
    ov = [o for o in ov if not o.startswith("artifacts_root=")] + [f"artifacts_root={tmp_path}"]
    with pytest.raises(SkillweaveError) as info:
        run_overrides([*ov, *extra])
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_reference_teacher_writes_the_skills_own_answers(skill_run):
    """s2l.teacher=reference: one answer per input, the skill's reference; they pass its checks, so all are kept."""
    _, ov, backbone = skill_run
    (ref,) = run_overrides([*ov, "s2l.teacher=reference"]).values()
    assert ref.key != backbone.key
    metrics = ref.manifest()["metrics"]
    assert metrics["written"] == metrics["kept"] == 6 and metrics["rejected_by"] == {}
    rows = [json.loads(line) for line in ref.file("train").read_text().splitlines()]
    assert all(r["completion"] == " ".join([r["prompt"].split()[1]] * 2) for r in rows)  # "say w and w" -> "w w"


def test_s2l_precision_keys_and_refusal(skill_run, monkeypatch):
    from compose import compose_config, hydra_context

    from skillweave import models, training
    from skillweave.config import Precision
    from skillweave.core.engine import Context, ref_for

    _, ov, _ = skill_run
    with hydra_context():
        fp32 = ref_for(Context(cfg=compose_config([*ov, "s2l.precision=float32"])), "s2l", None)
        auto = ref_for(Context(cfg=compose_config(ov)), "s2l", None)
    assert fp32.config["precision"] == "float32"
    if models.native_bf16():  # auto is bf16 here: the key it had before the setting existed
        assert fp32.key != auto.key and "precision" not in auto.config
    else:
        assert fp32.key == auto.key
    monkeypatch.setattr(training, "native_bf16", lambda: False)
    with pytest.raises(SkillweaveError, match="s2l.precision=bfloat16 needs bf16 units"):
        training.training_precision(Precision.bfloat16, "s2l.precision")
