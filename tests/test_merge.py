"""The shared delta of mergekit's methods on hand-worked task vectors (mergekit in memory, zero base), and
the plan-time checks of merge.method and merge.parameters against mergekit's registry and specs."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from skillweave.config import MergeConfig
from skillweave.core.errors import ConfigError
from skillweave.merging import key_settings, merge_parameters, shared_delta, usable_methods
from skillweave.resources import resource_path

DELTAS = {
    "a": {"w": torch.tensor([[4.0, -1.0, 2.0, -3.0]])},
    "b": {"w": torch.tensor([[-2.0, 3.0, 1.0, 0.5]])},
}
THREE = ["math", "code", "instructions"]
MERGE_YAMLS = sorted(resource_path("conf", "merge").glob("*.yaml"))


def big_deltas(k: int = 3) -> dict[str, dict[str, torch.Tensor]]:
    """Dense random task vectors, a matrix and a vector each, as a model's are."""
    g = torch.Generator().manual_seed(0)
    return {f"d{i}": {"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)} for i in range(k)}


def from_yaml(path) -> MergeConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MergeConfig), OmegaConf.load(path)))


@pytest.mark.parametrize(
    "method, expected",
    [
        # normalize=True: the weighted mean of the task vectors
        ("task_arithmetic", [1.0, 1.0, 1.5, -1.25]),
        # TIES, density 0.5: trim each to its top-2 |values| -> a=[4,0,0,-3], b=[-2,3,0,0]; elect the sign
        # of the sum -> [+,+,0,-]; disjoint mean of the values agreeing with it -> [4,3,0,-3]
        ("ties", [4.0, 3.0, 0.0, -3.0]),
    ],
)
def test_shared_delta_hand_worked(method, expected):
    merged = shared_delta(DELTAS, MergeConfig(method=method, density=0.5))
    torch.testing.assert_close(merged["w"], torch.tensor([expected]))


def test_dare_drops_and_rescales_with_its_seed():
    big = {k: {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(i))} for i, k in enumerate("ab")}
    cfg = MergeConfig(method="dare_ties", density=0.5, seed=3)
    first, again = shared_delta(big, cfg), shared_delta(big, cfg)
    torch.testing.assert_close(first["w"], again["w"])  # the seed fixes DARE's random drop
    assert not torch.equal(first["w"], shared_delta(big, MergeConfig(method="dare_ties", density=0.5, seed=4))["w"])
    zeros = (first["w"] == 0).float().mean().item()
    assert 0.1 < zeros < 0.5  # ~half of each task vector dropped, fewer where the other task survives


# ---- which of mergekit's methods work here (measured with mergekit 0.1.5's 19 methods)

TASK_VECTOR_METHODS = [  # merge task vectors relative to a base, any number of them
    "breadcrumbs", "breadcrumbs_ties", "dare_linear", "dare_ties", "della", "della_linear", "multislerp",
    "ram", "ramplus_tl", "sce", "task_arithmetic", "ties",
]


def test_the_usable_methods_follow_the_number_of_domains():
    assert usable_methods(THREE) == sorted([*TASK_VECTOR_METHODS, "model_stock"])  # model_stock: 2 or more
    assert usable_methods(THREE[:2]) == sorted([*TASK_VECTOR_METHODS, "model_stock", "nuslerp"])  # nuslerp: exactly 2
    assert usable_methods(THREE[:1]) == TASK_VECTOR_METHODS


@pytest.mark.parametrize("method", sorted([*TASK_VECTOR_METHODS, "model_stock"]))
def test_every_usable_method_merges_three_domains_into_a_finite_delta_off_the_base(method):
    deltas = big_deltas()
    merged = shared_delta(deltas, MergeConfig(method=method))
    assert {k: v.shape for k, v in merged.items()} == {"w": (64, 64), "b": (64,)}
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() and v.abs().sum() > 0 for v in merged.values())
    # what makes a zero base right: mergekit's merge of the fine-tunes theta_0 + Delta_k with base theta_0
    # is theta_0 + the shared delta
    from mergekit.merge_methods import merge_state_dicts

    theta0 = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    models = {"base": theta0, **{d: {k: theta0[k] + v[k] for k in v} for d, v in deltas.items()}}
    torch.manual_seed(0)
    full = merge_state_dicts(models, method, parameters=merge_parameters(MergeConfig(method=method), list(deltas)), base="base")
    for k in merged:
        torch.testing.assert_close(full[k] - theta0[k], merged[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "method, domains, words",
    [
        ("linear", THREE, "takes no base model, so it merges whole models"),
        ("karcher", THREE, "takes no base model"),
        ("passthrough", THREE, "takes no base model"),
        ("slerp", THREE, "requires exactly 2 inputs; got 4"),
        ("nearswap", THREE, "requires exactly 2 inputs; got 4"),
        ("arcee_fusion", THREE, "requires exactly 2 inputs; got 4"),
        ("nuslerp", THREE, "requires exactly 2 non-base inputs; got 3"),
        ("model_stock", THREE[:1], "requires at least 3 inputs; got 2"),
        # one domain passes their input counts, but their merges read the base's own weights
        ("arcee_fusion", THREE[:1], "depends on the base model's own weights"),
    ],
)
def test_methods_that_cannot_merge_task_vectors_are_refused_with_the_reason(method, domains, words):
    with pytest.raises(ConfigError, match=rf"merge.method={method}: .*{words}.* Methods that can: breadcrumbs"):
        merge_parameters(MergeConfig(method=method), domains)


def test_slerp_on_one_domain_needs_t_then_is_refused_for_reading_the_base():
    with pytest.raises(ConfigError, match="merge.method=slerp needs its parameter t: set merge.parameters.t"):
        merge_parameters(MergeConfig(method="slerp"), ["math"])
    with pytest.raises(ConfigError, match="depends on the base model's own weights"):
        merge_parameters(MergeConfig(method="slerp", parameters={"t": 0.5}), ["math"])
    # nearswap's interpolation weight reads |base - model| only: a task-vector merge, given t
    assert merge_parameters(MergeConfig(method="nearswap", parameters={"t": 0.01}), ["math"]) == {"t": 0.01}


# ---- merge.parameters against the method's spec


def test_unknown_method_says_did_you_mean_and_lists_the_usable_ones():
    with pytest.raises(ConfigError, match=r"merge.method=tie: not supported. Did you mean 'ties'\? Valid: breadcrumbs, "):
        merge_parameters(MergeConfig(method="tie"), THREE)
    with pytest.raises(ConfigError, match="Valid: .*task_arithmetic, ties$"):
        shared_delta(DELTAS, MergeConfig(method="slerpp"))


def test_parameters_come_from_merge_parameters_then_the_legacy_fields_then_the_spec():
    cfg = MergeConfig(method="della", density=0.6, lambda_=0.9, parameters={"epsilon": 0.05, "density": 0.7})
    # density from parameters over the field, lambda from the field, epsilon given; rescale, int8_mask left
    # to mergekit's defaults
    assert merge_parameters(cfg, THREE) == {"normalize": True, "lambda": 0.9, "weight": 1.0, "density": 0.7, "epsilon": 0.05}
    # the fields mean only what the method declares: sce has no weight, density, normalize or lambda
    assert merge_parameters(MergeConfig(method="sce"), THREE) == {}


def test_a_per_model_parameter_takes_a_mapping_over_the_domains():
    weights = {"a": 3.0, "b": 1.0}
    merged = shared_delta(DELTAS, MergeConfig(method="task_arithmetic", parameters={"weight": weights}))
    torch.testing.assert_close(merged["w"], (3 * DELTAS["a"]["w"] + DELTAS["b"]["w"]) / 4)  # normalize: the weighted mean
    with pytest.raises(ConfigError, match=r"merge.parameters.weight: a per-model value needs exactly the run's domains \['a', 'b'\]"):
        merge_parameters(MergeConfig(method="ties", parameters={"weight": {"a": 1.0}}), ["a", "b"])


@pytest.mark.parametrize(
    "cfg, words",
    [
        (MergeConfig(method="ties", parameters={"epsilon": 0.1}), r"merge.parameters.epsilon: mergekit's ties has no such parameter. Valid: int8_mask, normalize, rescale, lambda, weight, density"),
        (MergeConfig(method="della", parameters={"epsilom": 0.1}), r"no such parameter. Did you mean 'epsilon'\?"),
        (MergeConfig(method="ram", parameters={"epsilon": "small"}), r"merge.parameters.epsilon='small': mergekit's ram takes a float"),
        (MergeConfig(method="ties", parameters={"weight": {"math": "heavy", "code": 1, "instructions": 1}}), r"merge.parameters.weight.math='heavy': mergekit's ties takes a float"),
        (MergeConfig(method="ties", parameters={"normalize": [True]}), r"merge.parameters.normalize=\[True\]: mergekit's ties takes one value"),
        (MergeConfig(method="multislerp", parameters={"normalize_weights": "maybe"}), r"takes a bool"),
        # a value of the right type that mergekit refuses: DELLA's probabilities must stay in (0, 1)
        (MergeConfig(method="della", density=0.5, parameters={"epsilon": 0.6}), r"merge.method=della: mergekit refuses these parameters: Epsilon must be"),
    ],
)
def test_bad_parameters_fail_at_plan_time_naming_the_setting(cfg, words):
    with pytest.raises(ConfigError, match=words):
        merge_parameters(cfg, THREE)


def test_parameters_enter_the_artifact_key_only_when_set():
    plain = MergeConfig(method="ties")
    assert "parameters" not in key_settings(plain, ["math", "code"])  # the key every existing config had
    assert key_settings(MergeConfig(method="ties", parameters={"int8_mask": True}), ["math", "code"])["parameters"] == {"int8_mask": True}


# ---- conf/merge/*.yaml: each is a merge=<m> setting and a merged_<m> eval configuration


@pytest.mark.parametrize("path", MERGE_YAMLS, ids=lambda p: p.stem)
def test_every_merge_yaml_merges_tiny_deltas_into_a_finite_delta(path):
    cfg = from_yaml(path)
    assert cfg.method == path.stem
    for deltas in (DELTAS, big_deltas()):
        merged = shared_delta(deltas, cfg)
        assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in merged.values())


@pytest.mark.parametrize("path", [p for p in MERGE_YAMLS if from_yaml(p).parameters], ids=lambda p: p.stem)
def test_a_yamls_spec_parameter_changes_the_merge(path):
    cfg = from_yaml(path)
    deltas = big_deltas()
    before = shared_delta(deltas, cfg)
    for name, value in cfg.parameters.items():
        changed = MergeConfig(**{**cfg.__dict__, "parameters": {**cfg.parameters, name: value * 2}})
        after = shared_delta(deltas, changed)
        assert not torch.equal(before["w"], after["w"]), name


def test_merged_configurations_follow_the_yamls():
    from skillweave.core.configurations import CONFIGURATIONS

    assert {f"merged_{p.stem}" for p in MERGE_YAMLS} <= set(CONFIGURATIONS.names())
    assert {"merged_della", "merged_breadcrumbs", "merged_sce"} <= set(CONFIGURATIONS.names())


def test_a_method_merged_with_other_parameters_than_before_gets_a_new_key():
    # dare_linear never received merge.normalize before the specs drove the parameters; now it does, so its
    # key covers what mergekit receives, while the legacy methods (bit-identical merges) keep theirs.
    dare_linear = key_settings(MergeConfig(method="dare_linear"), ["math", "code"])
    assert dare_linear["resolved"]["normalize"] is True
    assert "resolved" not in key_settings(MergeConfig(method="ties"), ["math", "code"])
