"""Composing configs as `python -m skillweave` does, and checking a composed config against the
registries before anything runs.

Hydra checks keys and types against the schema (skillweave/config.py); `validate` checks what only
the registries know (stage names, eval configurations, domains), so a typo fails at start-up with
"did you mean".
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..config import SkillweaveConfig, register_configs, to_config
from ..resources import resource_path
from .configurations import CONFIGURATIONS
from .engine import STAGES
from .errors import ConfigError, UnknownChoice

CONF_DIR = str(resource_path("conf"))
RESERVED = ("stage", "domain")
"""Chosen per job when stage=all fans out over domains: never replayed."""

Composer = Callable[[list[str]], SkillweaveConfig]


def replayable(overrides: Iterable[str]) -> tuple[str, ...]:
    """The user's overrides without `stage=`/`domain=`, to compose the same run for another domain."""
    return tuple(o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in RESERVED)


def domain_choices() -> list[str]:
    return sorted(p.stem for p in resource_path("conf", "domain").glob("*.yaml"))


def composer() -> Composer:
    """A function overrides -> typed config, with the `domain_overrides` of the domain it composes applied
    first; call inside Hydra's context (`hydra.main` or `initialize_config_dir`)."""
    from hydra import compose

    register_configs()

    def compose_run(extra: list[str]) -> SkillweaveConfig:
        cfg = to_config(compose(config_name="config", overrides=list(extra)))
        own = domain_overrides(cfg)
        return to_config(compose(config_name="config", overrides=[*own, *extra])) if own else cfg

    return compose_run


def domain_overrides(cfg: SkillweaveConfig) -> list[str]:
    """`cfg.domain_overrides` of its domain; ConfigError for one that names a domain outside `domains` or
    sets what it cannot (the domain or stage it is for, or domain_overrides itself)."""
    for domain, overrides in cfg.domain_overrides.items():
        if domain not in cfg.domains:
            raise ConfigError(f"domain_overrides.{domain}: {domain} is not among domains={list(cfg.domains)}: add it there or drop its overrides")
        for o in overrides:
            key = o.lstrip("+~").split("=", 1)[0]
            if key in (*RESERVED, "domains") or key.split(".", 1)[0] == "domain_overrides" or "=" not in o:
                raise ConfigError(f"domain_overrides.{domain}: {o!r} is not a setting override for one domain; give key=value pairs other than {', '.join((*RESERVED, 'domains', 'domain_overrides'))}")
    return list(cfg.domain_overrides.get(cfg.domain.name, []))


def choose(name: str, valid: Iterable[str], what: str, setting: str) -> None:
    """Raises UnknownChoice, with did-you-mean, when `name` (the value of `setting`) is not in `valid`."""
    import difflib

    valid = sorted(valid)
    if name not in valid:
        close = difflib.get_close_matches(str(name), valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownChoice(f"{setting}={name}: unknown {what} {name!r}.{hint} Valid: {', '.join(valid)}")


def validate(cfg: SkillweaveConfig) -> None:
    """Registry-backed names of `cfg`, checked before any model loads (plugins must be loaded).

    Raises:
        UnknownChoice: an unknown stage, pipeline stage or eval configuration (domains are checked
            when each is composed: a domain's YAML may come from `hydra.searchpath`).
        ConfigError: an empty list where one name at least is needed.
    """
    choose(cfg.stage, [*STAGES.names(), "all"], "stage", "stage")
    if not cfg.pipeline:
        raise ConfigError("pipeline=[] makes nothing: list the stages stage=all runs, e.g. [generate,filter,dpo,merge,zip,eval]")
    for name in cfg.pipeline:
        choose(name, STAGES.names(), "stage", "pipeline")
    if not cfg.domains:
        raise ConfigError("domains=[] covers nothing: name at least one of " + ", ".join(domain_choices()))
    if not cfg.eval.configurations:
        raise ConfigError("eval.configurations=[] compares nothing: name at least one, e.g. [base,skillweave]")
    for name in cfg.eval.configurations:
        choose(name, CONFIGURATIONS.names(), "eval configuration", "eval.configurations")
    for name in cfg.eval.compare_to:  # a row the eval lacks pairs nothing, but a misspelt one is a mistake
        choose(name, CONFIGURATIONS.names(), "eval configuration", "eval.compare_to")
