"""Every config and recipe composes; typos and wrong types fail at compose time with the choices."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from compose import compose_config, hydra_context
from skillweave.app import context
from skillweave.core.compose import domain_choices, replayable
from skillweave.core.errors import SkillweaveError
from skillweave.core.engine import STAGES
from skillweave.resources import resource_path


def group(name: str) -> list[str]:
    return sorted(p.stem for p in resource_path("conf", name).glob("*.yaml"))


@pytest.mark.parametrize(
    "overrides",
    [[]]
    + [[f"stage={s}"] for s in [*STAGES.names(), "all"]]
    + [[f"domain={d}"] for d in group("domain")]
    + [[f"merge={m}"] for m in group("merge")]
    + [[f"zip={z}"] for z in group("zip")]
    + [[f"recipe={r}"] for r in group("recipe")]
    + [["model=hf_dir", "model.path=/some/dir"]],
)
def test_every_config_composes(overrides):
    with hydra_context():
        cfg = compose_config(overrides)
    assert cfg.domain.name in domain_choices()
    assert cfg.model.path


def test_default_is_the_quickstart_pipeline_on_the_embedded_model():
    with hydra_context():
        cfg = compose_config([])
    assert cfg.stage == "all" and cfg.model.path == "embedded"
    assert cfg.domains == ["math", "code", "instructions"]
    assert cfg.dpo.max_steps == 8  # recipes/quickstart.yaml, not the conf/ default


@pytest.mark.parametrize(
    "override, error, words",
    [
        ("domain=mathh", MissingConfigException, "domain/mathh"),
        ("dpo.lr=1", ConfigCompositionException, "lr"),
        ("dpo.max_steps=abc", ConfigCompositionException, "max_steps"),
        ("dpo.precision=fp16", ConfigCompositionException, "fp16"),
    ],
)
def test_bad_overrides_fail_at_compose_time(override, error, words):
    with hydra_context(), pytest.raises(error) as info:
        compose_config([override])
    assert words in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize(
    "override, words",
    [("domain.sampling.samples_per_prompt=1", "samples_per_prompt"), ("dpo.nll_weight=-0.5", "dpo.nll_weight must be >= 0")],
)
def test_cross_field_checks_run_at_start(override, words):
    with hydra_context(), pytest.raises((ValueError, ValidationError), match=words):
        compose_config([override])


def test_overrides_replayed_for_other_domains_drop_stage_and_domain():
    assert replayable(["stage=dpo", "domain=math", "domain.sampling.num_prompts=3", "+x=1"]) == (
        "domain.sampling.num_prompts=3",
        "+x=1",
    )


@pytest.mark.parametrize(
    ("setting", "cuda", "cpu_bf16", "expected"),
    [
        ("auto", False, False, "float32"),  # e.g. an AMD EPYC without AVX512-BF16: bf16 is emulated
        ("auto", False, True, "bfloat16"),
        ("auto", True, True, "bfloat16"),
        ("float32", False, True, "float32"),  # an explicit setting is kept
        ("bfloat16", False, False, "bfloat16"),
    ],
)
def test_generation_dtype_auto_is_bf16_only_where_native(monkeypatch, setting, cuda, cpu_bf16, expected):
    import torch

    from skillweave.models import generation_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert generation_dtype(setting) == expected


def test_generate_is_keyed_by_the_resolved_dtype(monkeypatch, tmp_path, tiny_model_dir):
    """`auto` and the dtype it resolves to plan the same artifact, so recorded runs keep their keys."""
    import torch

    from skillweave.core.engine import Context, plan

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    keys = {}
    with hydra_context():
        for setting in ("auto", "bfloat16", "float32"):
            ov = ["model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={tmp_path}",
                  f"model.generation_dtype={setting}"]
            ctx = Context(cfg=compose_config(ov), overrides=tuple(ov), composer=compose_config)
            keys[setting] = plan(ctx, "generate", "math")[0].path
    assert keys["auto"] == keys["bfloat16"] != keys["float32"]


@pytest.mark.parametrize(
    "override, words",
    [
        ("stage=dpoo", "stage=dpoo: unknown stage 'dpoo'. Did you mean 'dpo'?"),
        ("eval.configurations=[base,skilweave]", "eval.configurations=skilweave: unknown eval configuration 'skilweave'. Did you mean 'skillweave'?"),
        ("pipeline=[generate,filtr]", "pipeline=filtr: unknown stage 'filtr'. Did you mean 'filter'?"),
        ("domains=[math,cod]", "domains=cod: unknown domain (conf/domain/ and hydra.searchpath) 'cod'. Did you mean 'code'?"),
        ("eval.configurations=[]", "eval.configurations=[] compares nothing"),
        ("domains=[]", "domains=[] covers nothing"),
    ],
)
def test_registry_backed_names_fail_at_start_up_with_did_you_mean(override, words):
    with hydra_context(), pytest.raises(SkillweaveError) as info:
        context(compose_config([override]), (), compose_config)
    assert str(info.value).startswith(words)
