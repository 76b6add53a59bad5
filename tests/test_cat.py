"""Stage cat on the tiny model: two S2L skillpacks (trained first, by the same command) composed with
weights learned on a few examples of a task that needs both."""

from __future__ import annotations

import textwrap

import pytest
from test_pipeline import run_overrides

from skillweave.core.errors import SkillweaveError

SKILL = '''
import random
from pathlib import Path

from skillweave.rules import RuleResult, rule
from skillweave.skill import generated_tasks, register_skill

WORDS = "the a one two three four five six seven eight nine zero def return print add sum list yes no".split()
TIMES = {TIMES}


def draw(rng: random.Random, split: str):
    first, second = rng.choice(WORDS[:14] if split == "train" else WORDS[14:]), rng.choice(WORDS)
    return f"say {{first}} {{second}}", {{"words": [first, second]}}


if not "{NAME}".startswith("say_both"):
    @rule("{NAME}_even")
    def even(sample) -> RuleResult:
        n = len(sample["response"].split())
        return RuleResult(n % 2 == 0, float(n % 2 == 0), f"{{n}} words")


def reference(task):
    return " ".join(w for w, k in zip(task["meta"]["words"], TIMES) for _ in range(k))


SKILL = register_skill(Path(__file__).parent, generated_tasks("{NAME}", draw), {CHECKS}, reference)
'''


def skill_dir(root, name: str, times: tuple[int, int], checks: list[str]):
    folder = root / name
    folder.mkdir()
    (folder / "SKILL.md").write_text(f"---\nname: {name}\ndescription: Say the words {times} times.\n---\n1. Say them.\n")
    (folder / "__init__.py").write_text(textwrap.dedent(SKILL).format(NAME=name, TIMES=times, CHECKS=checks))
    return folder


@pytest.fixture(scope="module")
def cat_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("cat")
    folders = [skill_dir(root, "say_first", (2, 0), ["not_truncated", "say_first_even"]),
               skill_dir(root, "say_second", (0, 2), ["not_truncated", "say_second_even"]),
               skill_dir(root, "say_both", (2, 2), ["not_truncated", "say_first_even"])]
    ov = ["recipe=tiny", "model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={root / 'artifacts'}",
          f"skill_dirs=[{','.join(map(str, folders))}]", "stage=cat", "skills=[say_first,say_second]", "task=say_both",
          "s2l.inputs=6", "s2l.samples_per_input=4", "s2l.max_new_tokens=48", "s2l.steps=3", "s2l.per_device_batch_size=2",
          "lora.rank=4", "cat.examples=8", "cat.batch_size=4", "cat.steps=30", "cat.learning_rate=0.1"]
    return root, ov, run_overrides(ov)


def test_one_command_trains_both_skillpacks_then_learns_their_weights(cat_run):
    _, _, refs = cat_run
    stages = sorted(ref.stage + "/" + ref.label for ref in refs.values())
    assert stages == ["cat/say_both", "s2l/say_first", "s2l/say_second"]
    cat = next(ref for ref in refs.values() if ref.stage == "cat")
    m = cat.manifest()["metrics"]
    assert m["skills"] == ["say_first", "say_second"] and m["examples"] == 8 and m["steps"] == 30
    assert m["loss_after"] < m["loss_before"]  # the alphas fit the composed task's answers
    assert any(abs(a - 1.0) > 1e-3 for a in m["mean_alpha"].values())  # moved from the plain sum


def test_the_composition_is_one_artifact_of_its_parts(cat_run, tiny_model_dir):
    from skillweave.composition import from_peft_adapter, load_composition
    from skillweave.core.errors import ArtifactError
    from skillweave.models import model_fingerprint

    _, _, refs = cat_run
    by = {f"{r.stage}/{r.label}": r for r in refs.values()}
    parts = [from_peft_adapter(by[f"s2l/{n}"].file("adapter"), name=n) for n in ("say_first", "say_second")]
    composition, meta = load_composition(by["cat/say_both"].file("composition"), parts, model_fingerprint(tiny_model_dir))
    assert meta["task"] == "say_both" and len(composition.alphas()) > 0
    with pytest.raises(ArtifactError):  # the parts in another order are other parts
        load_composition(by["cat/say_both"].file("composition"), parts[::-1], model_fingerprint(tiny_model_dir))


@pytest.mark.parametrize(
    "extra, words",
    [
        (["skills=[say_first]"], "stage=cat composes two or more distinct skills"),
        (["task="], "stage=cat needs task=<composed skill>"),
        (["skills=[say_first,say_secnd]"], "skills=say_secnd: unknown skill 'say_secnd'. Did you mean 'say_second'?"),
        (["cat.steps=0"], "cat.examples, steps, batch_size and max_length must be >= 1"),
    ],
)
def test_bad_cat_input_is_one_line(cat_run, tmp_path, extra, words):
    _, ov, _ = cat_run
    ov = [o for o in ov if not o.startswith("artifacts_root=")] + [f"artifacts_root={tmp_path}"]
    with pytest.raises(SkillweaveError) as info:
        run_overrides([*ov, *extra])
    assert words in str(info.value) and "\n" not in str(info.value)
