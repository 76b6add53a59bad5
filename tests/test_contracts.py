"""One contract per plugin kind, over every registered plugin: a new stage, eval configuration or
domain is checked by being registered."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import yaml
from test_pipeline import overrides

from compose import compose_config, hydra_context
from skillweave.app import context
from skillweave.core.compose import domain_choices, replayable
from skillweave.core.configurations import CONFIGURATIONS
from skillweave.core.engine import STAGES, Need, plan
from skillweave.eval_tasks import EVAL_TASKS
from skillweave.prompts import PROMPT_SOURCES
from skillweave.resources import resource_path
from skillweave.rules import load_rule_set


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_model_dir):
    ov = [*overrides(tmp_path_factory.mktemp("contracts"), tiny_model_dir), "domains=[math,code]",
          "eval.configurations=[base]", "skill=iso_dates", "skills=[iso_dates,si_units]", "task=json_schema"]
    with hydra_context():
        yield context(compose_config(ov), replayable(ov), compose_config)


@pytest.mark.parametrize("name", STAGES.names())
def test_every_stage_plans_from_config_alone_and_declares_its_outputs(ctx, name):
    stage = STAGES.get(name)
    config, needs = stage.plan(ctx, "math" if stage.per_domain else None)
    assert isinstance(config, dict) and isinstance(needs, Mapping)
    assert all(isinstance(n, Need) and n.stage in STAGES for n in needs.values())
    assert stage.outputs and all(isinstance(p, str) and not p.startswith("/") for p in stage.outputs.values())
    ref, _ = plan(ctx, name, "math")
    assert ref.outputs == stage.outputs and ref.file(next(iter(stage.outputs))).parent == ref.path


@pytest.mark.parametrize("name", CONFIGURATIONS.names())
def test_every_eval_configuration_names_registered_inputs(ctx, name):
    if name == "external":
        pytest.skip("needs eval.external_model (tests/test_baselines.py runs it)")
    needs = CONFIGURATIONS.get(name).needs(ctx)
    assert all(isinstance(n, Need) and n.stage in STAGES for n in needs.values())
    for need in needs.values():
        need.ref  # plans: every input's key is computable before anything runs


@pytest.mark.parametrize("domain", domain_choices())
def test_every_domain_config_names_a_registered_source_rule_set_and_eval_task(domain):
    spec = yaml.safe_load(resource_path("conf", "domain", f"{domain}.yaml").read_text())
    assert spec["name"] == domain and spec["prompt_source"]["name"] in PROMPT_SOURCES
    assert load_rule_set(domain, resource_path("rules", f"{spec['rules']}.yaml")).rules
    assert spec["eval_task"] in EVAL_TASKS


@pytest.mark.parametrize("name", EVAL_TASKS.names())
def test_every_eval_task_is_an_lm_eval_task_with_its_metric(name):
    task = EVAL_TASKS.get(name)
    spec = yaml.load(task.yaml.read_text(), Loader=yaml.BaseLoader)  # the !function tags stay strings
    assert spec["task"] == name
    metrics = {m["metric"] for m in spec.get("metric_list", [])}
    if "include" in spec:  # e.g. skillweave_arith includes skillweave_math's scoring
        base = yaml.load((task.yaml.parent / spec["include"]).read_text(), Loader=yaml.BaseLoader)
        metrics |= {m["metric"] for m in base.get("metric_list", [])}
    assert task.primary_metric in metrics and set(task.also_kept) <= metrics
    assert all(f.is_file() for f in task.digest_files)
