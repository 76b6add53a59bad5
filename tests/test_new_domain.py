"""A domain is a folder: one built in a temporary directory runs generate -> filter -> eval on the tiny
model, and no file of the repository is edited (docs/adding_a_domain.md walks through the same files)."""

from __future__ import annotations

import json
import textwrap

import pytest
from test_pipeline import run_overrides

from skillweave.core.errors import SkillweaveError

DOMAIN_INIT = '''
"""toy: the model is asked to say a word; the rule checks that it did."""

import random
from pathlib import Path

from skillweave.eval_tasks import EvalTask, register_eval_task
from skillweave.prompts import PROMPT_SOURCES, check_n, row, take
from skillweave.rules import RuleResult, rule

from .scoring import EVAL_WORDS, WORDS

HERE = Path(__file__).parent


@PROMPT_SOURCES.register("toy_say_a_word")
def say_a_word(n: int, seed: int) -> list[dict]:
    check_n(n, "toy_say_a_word")
    words = [w for w in WORDS if w not in EVAL_WORDS]
    random.Random(seed).shuffle(words)
    return take([row(f"say {w}", {"word": w}) for w in words], n, "toy_say_a_word")


@rule("toy_says_the_word")
def says_the_word(sample) -> RuleResult:
    said = sample["meta"]["word"] in sample["response"].split()
    return RuleResult(said, float(said), "said it" if said else "did not say it")


register_eval_task(EvalTask(
    "skillweave_toy", HERE / "skillweave_toy.yaml", "said", lambda: [f"say {w}" for w in EVAL_WORDS],
    digest_files=(HERE / "scoring.py",),
))
'''

SCORING = '''
"""The toy eval set's loader and scorer (lm-eval imports this file by path, from the YAML beside it)."""

from skillweave.eval_tasks import as_dataset

WORDS = "the a one two three four five six seven eight nine zero def return print add sum list yes no".split()
EVAL_WORDS = ("yes", "no", "sum", "list")


def load_docs(**_metadata):
    return as_dataset([{"id": f"toy/{w}", "prompt": f"say {w}", "word": w} for w in EVAL_WORDS])


def process_results(doc, results):
    return {"said": float(doc["word"] in results[0].split())}
'''

TASK_YAML = """
task: skillweave_toy
custom_dataset: !function scoring.load_docs
test_split: test
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: word
generation_kwargs:
  until: ["<|im_end|>"]
  do_sample: false
process_results: !function scoring.process_results
metric_list:
  - metric: said
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_model_dir):
    """The toy domain's files, all outside the repository: its folder, conf/domain YAML and rule set."""
    root = tmp_path_factory.mktemp("toy")
    folder = root / "toy"
    folder.mkdir()
    (folder / "__init__.py").write_text(textwrap.dedent(DOMAIN_INIT))
    (folder / "scoring.py").write_text(textwrap.dedent(SCORING))
    (folder / "skillweave_toy.yaml").write_text(TASK_YAML)
    (root / "rules.yaml").write_text("rules:\n  - name: not_truncated\n  - name: toy_says_the_word\n")
    (root / "conf" / "domain").mkdir(parents=True)
    (root / "conf" / "domain" / "toy.yaml").write_text(
        "name: toy\nprompt_source:\n  name: toy_say_a_word\nsampling:\n  num_prompts: 6\n"
        f"rules: {root / 'rules.yaml'}\neval_task: skillweave_toy\n"
    )
    overrides = [
        "recipe=tiny", "model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={root / 'artifacts'}",
        f"hydra.searchpath=[file://{root / 'conf'}]", f"domain_dirs=[{folder}]", "domain=toy", "domains=[toy]",
        "pipeline=[generate,filter,eval]", "eval.configurations=[base]", "eval.limit=null",
    ]
    return root, overrides


def test_a_domain_in_a_new_folder_runs_generate_filter_and_eval(toy):
    root, overrides = toy
    refs = run_overrides(overrides)
    assert set(refs) == {"generate/toy", "filter/toy", "eval"}
    samples = [json.loads(line) for line in refs["generate/toy"].file("samples").read_text().splitlines()]
    assert len({s["prompt_id"] for s in samples}) == 4  # recipe=tiny samples 4 prompts
    assert all(s["prompt"].startswith("say ") and s["meta"]["word"] not in ("yes", "no", "sum", "list") for s in samples)
    scored = [json.loads(line) for line in refs["filter/toy"].file("scored").read_text().splitlines()]
    assert all(set(s["rules"]) == {"not_truncated", "toy_says_the_word"} for s in scored)  # the domain's own rule
    results = json.loads(refs["eval"].file("results").read_text())
    (base,) = results["configurations"]
    assert results["tasks"] == {"toy": "skillweave_toy"} and base["n"] == {"toy": 4}  # the whole toy eval set
    rows = [json.loads(line) for line in (refs["eval"].path / "samples" / "base-toy.jsonl").read_text().splitlines()]
    assert base["scores"]["toy"] == sum(r["score"] for r in rows) / 4


def test_the_new_domains_eval_key_follows_its_scoring_file(toy):
    from compose import compose_config, hydra_context

    from skillweave.app import context
    from skillweave.core.compose import replayable
    from skillweave.core.engine import ref_for

    root, overrides = toy
    run_overrides(overrides)  # loads the domain (a no-op when the test above ran)

    def eval_key() -> str:
        with hydra_context():
            return ref_for(context(compose_config(overrides), replayable(overrides), compose_config), "eval").key

    before = eval_key()
    scoring = root / "toy" / "scoring.py"
    scoring.write_text(scoring.read_text() + "# scoring changed\n")
    assert eval_key() != before


def test_a_domain_folder_without_init_is_one_clear_error(tmp_path, tiny_model_dir):
    from compose import compose_config, hydra_context

    from skillweave.app import context

    with hydra_context(), pytest.raises(SkillweaveError, match="is not a domain folder"):
        context(compose_config([f"domain_dirs=[{tmp_path}]"]), (), compose_config)


def test_the_command_line_replays_the_search_path_for_every_domain(toy, tiny_model_dir):
    """`python -m skillweave`: Hydra files hydra.searchpath among its own overrides; every other domain the
    run composes (here the toy one, beside math) must see it too."""
    import os
    import subprocess
    import sys

    root, overrides = toy
    given = [o for o in overrides if not o.startswith(("domain=", "domains=", "pipeline="))]
    proc = subprocess.run(
        [sys.executable, "-m", "skillweave", *given, "stage=filter", "domain=math", "domains=[math,toy]",
         f"hydra.run.dir={root / 'run'}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"},
    )
    assert proc.returncode == 1
    assert "unknown domain" not in proc.stderr  # toy composed: its YAML was found on the search path
    assert "stage filter needs the generate artifact for domain math" in proc.stderr.strip().splitlines()[-1]
