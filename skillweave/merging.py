"""The shared delta (a mergekit method on the task vectors, zero base) and the merged backbone as an HF directory.

Merge methods are mergekit's own: `merge.method` is any name in `registered_methods()`, and its parameters
are bound from the method's `MergeMethodSpec`, so a method mergekit adds is usable without code here. The
merge runs on the task vectors Delta_k against an all-zero base, so it must be a merge *relative to a base*:
base + merge(Delta_k; base 0) must equal mergekit's merge of the fine-tunes theta_0 + Delta_k with base
theta_0. `merge_parameters` checks that when the merge is planned and refuses, with the reason (examples
from mergekit 0.1.5):
- a method that takes no base (linear, karcher, passthrough): it merges whole models, the backbone included;
- a fixed number of models the run does not have (slerp, nearswap, arcee_fusion: one; nuslerp: two;
  model_stock: two or more), from the method's `InputContract`;
- a result that depends on the base's own weights (slerp, arcee_fusion), found by merging random tensors
  both ways: the check a new mergekit method gets too.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .config import MergeConfig
from .core.errors import ArtifactError, ConfigError
from .models import load_model, load_tokenizer, model_fingerprint

BASE = "__base__"
"""The zero base's input id (domain names cannot take it)."""
LEGACY_FIELDS = {"weight": "weight", "density": "density", "normalize": "normalize", "lambda": "lambda_"}
"""mergekit parameter -> the MergeConfig field that sets it, for every method whose spec declares it."""


def _registry() -> dict:
    from mergekit.merge_methods import registered_methods

    return {m.spec.name: m for m in registered_methods()}


LEGACY_METHODS = ("task_arithmetic", "ties", "dare_ties")
"""Merged exactly as before mergekit's specs drove the parameters (checked bit for bit): their keys stay."""


def key_settings(cfg: MergeConfig, domains: Sequence[str]) -> dict:
    """What the merge's artifact key hashes: the config, less an empty `parameters` (so every config that
    sets none keeps the key it had before the field existed); for every other method also the parameters
    mergekit receives, so a spec default or a legacy field reaching a method it did not reach before
    (dare_linear's normalize) gives a new key instead of reusing another computation's merge.

    Raises:
        ConfigError: as merge_parameters (so an unusable method or parameter fails when the merge is planned).
    """
    resolved = merge_parameters(cfg, domains)
    settings = asdict(cfg)
    if not settings["parameters"]:
        del settings["parameters"]
    if cfg.method not in LEGACY_METHODS:
        settings["resolved"] = resolved
    return settings


class _Refused(Exception):
    """A method that cannot merge this run's task vectors (the message says why)."""


def usable_methods(domains: Sequence[str]) -> list[str]:
    """mergekit's methods that merge `domains`' task vectors with the default settings."""
    usable = []
    for name, method in _registry().items():
        try:
            _bind(method, MergeConfig(method=name), domains)
        except (_Refused, ConfigError):
            continue
        usable.append(name)
    return sorted(usable)


def merge_parameters(cfg: MergeConfig, domains: Sequence[str]) -> dict[str, Any]:
    """The parameters mergekit's `cfg.method` merges `domains` with, after every check that can fail before
    a merge runs (called when the merge is planned, and again by `shared_delta`).

    Each parameter of the method's spec takes, in order: `merge.parameters[name]`, the MergeConfig field of
    that name (weight, density, normalize, lambda_), or is left to the spec's default. A per-model parameter
    takes one value for every domain or a mapping {domain: value}.

    Raises:
        ConfigError: an unknown method, one that cannot merge task vectors relative to a base (see the
            module docstring), a parameter its spec does not declare, a value of the wrong type, or a
            required parameter with no value.
    """
    methods = _registry()
    if cfg.method not in methods:
        close = difflib.get_close_matches(str(cfg.method), list(methods), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"merge.method={cfg.method}: not supported.{hint} Valid: {', '.join(usable_methods(domains))}")
    try:
        return _bind(methods[cfg.method], cfg, domains)
    except _Refused as e:
        raise ConfigError(f"merge.method={cfg.method}: {e}. Methods that can: {', '.join(usable_methods(domains))}") from None


def _bind(method, cfg: MergeConfig, domains: Sequence[str]) -> dict[str, Any]:
    """`merge_parameters` for a registered method. Raises _Refused (the method) or ConfigError (a parameter)."""
    from mergekit.merge_methods.base import BasePolicy, ParameterScope

    spec, name = method.spec, method.spec.name
    if spec.contract.base == BasePolicy.IGNORED:
        raise _Refused(
            f"mergekit's {name} takes no base model, so it merges whole models (the backbone would count as one "
            "more); skillweave merges the domains' task vectors relative to the backbone"
        )
    try:
        method.validate_inputs([BASE, *domains], BASE)
    except ValueError as e:
        raise _Refused(
            f"mergekit's {name} says {str(e)!r}, counting the base; skillweave merges the backbone as the base and "
            f"one task vector per domain, {len(domains)} with domains={list(domains)}"
        ) from None

    declared = {p.name: p for p in spec.parameters}
    for key in cfg.parameters:
        if key not in declared:
            close = difflib.get_close_matches(str(key), list(declared), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"merge.parameters.{key}: mergekit's {name} has no such parameter.{hint} "
                f"Valid: {', '.join(declared) or '(none)'}"
            )
    params: dict[str, Any] = {}
    for p in spec.parameters:
        if p.name in cfg.parameters:
            value, setting = cfg.parameters[p.name], f"merge.parameters.{p.name}"
        elif p.name in LEGACY_FIELDS:
            value, setting = getattr(cfg, LEGACY_FIELDS[p.name]), f"merge.{LEGACY_FIELDS[p.name]}"
        elif p.required:
            raise ConfigError(f"merge.method={name} needs its parameter {p.name}: set merge.parameters.{p.name}")
        else:
            continue  # mergekit applies the spec's default
        if p.scope != ParameterScope.SHARED and isinstance(value, Mapping):
            if set(value) != set(domains):
                raise ConfigError(
                    f"{setting}: a per-model value needs exactly the run's domains {list(domains)} as keys, got {list(value)}"
                )
            params[p.name] = {d: _validated(p, value[d], f"{setting}.{d}", name) for d in domains}
        else:
            params[p.name] = _validated(p, value, setting, name)

    if not _relative_to_base(method, params, domains):
        raise _Refused(
            f"mergekit's {name} depends on the base model's own weights, not only on the task vectors (checked on "
            "random tensors), so merging task vectors against a zero base would not give its merge"
        )
    return params


def _validated(spec, value: Any, setting: str, method: str) -> Any:
    """`value` as the parameter's type (pydantic, as mergekit binds it), or a ConfigError naming the setting."""
    from pydantic import ValidationError

    if isinstance(value, (Mapping, list, tuple)):
        raise ConfigError(f"{setting}={value!r}: mergekit's {method} takes one value here")
    try:
        return spec.validate(value)
    except ValidationError as e:
        kind = getattr(spec.value_type, "__name__", str(spec.value_type))
        raise ConfigError(f"{setting}={value!r}: mergekit's {method} takes a {kind} ({e.errors()[0]['msg']})") from None


def _relative_to_base(method, params: dict, domains: Sequence[str]) -> bool:
    """Whether base + merge(task vectors; zero base) == merge(base + task vectors; base) on random tensors.

    Random draws (DARE's drop) are seeded alike for both merges, and the caller's random state is kept.

    Raises:
        ConfigError: mergekit fails on them (a parameter value it refuses).
    """
    from mergekit.merge_methods import merge_state_dicts

    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 32, generator=g, dtype=torch.float64)  # a 4 x 8 tensor can miss arcee_fusion's dependence
    deltas = {d: 0.1 * torch.randn(16, 32, generator=g, dtype=torch.float64) for d in domains}

    def merged_delta(b: torch.Tensor) -> torch.Tensor:
        models = {BASE: {"w": b}, **{d: {"w": b + t} for d, t in deltas.items()}}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return merge_state_dicts(models, method, parameters=params, base=BASE)["w"] - b

    try:
        full, zero = merged_delta(base), merged_delta(torch.zeros_like(base))
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigError(f"merge.method={method.spec.name}: mergekit refuses these parameters: {e}") from None
    return bool(torch.allclose(full, zero, rtol=1e-6, atol=1e-9))


def shared_delta(deltas: dict[str, dict[str, torch.Tensor]], cfg: MergeConfig) -> dict[str, torch.Tensor]:
    """mergekit's merge of the task vectors `deltas` (domain -> delta), relative to a zero base."""
    from mergekit.merge_methods import merge_state_dicts

    params = merge_parameters(cfg, list(deltas))
    first = next(iter(deltas.values()))
    zero = {k: torch.zeros_like(v) for k, v in first.items()}
    torch.manual_seed(cfg.seed)  # the random drop of DARE and DELLA
    with torch.no_grad():
        merged = merge_state_dicts({BASE: zero, **deltas}, cfg.method, parameters=params, base=BASE)
    return {k: v.float().contiguous() for k, v in merged.items()}


def save_backbone(template_dir: Path, state_dict: dict[str, torch.Tensor], out: Path) -> str:
    """A HF model directory with `state_dict` as weights (config and tokenizer from `template_dir`)."""
    import shutil

    model = load_model(template_dir)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or any(not k.startswith("lm_head") for k in missing):
        raise ArtifactError(f"backbone weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    load_tokenizer(template_dir).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    fp = model_fingerprint(out)
    return fp
