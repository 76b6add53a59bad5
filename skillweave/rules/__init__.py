"""Rule-based verifiers and the per-domain rule sets that turn sampled responses into DPO pairs.

A rule set is a YAML file, `rules/<domain>.yaml`, listing registered rules with their keyword
arguments; `load_rule_set` checks it completely (file, rule names, kwargs) before anything runs.
The rules shared by every domain live here (common.py, quality.py: the guards); each domain's own
verifiers live in its folder (skillweave/domains/<domain>/verifiers.py) and register on import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from skillweave.core.errors import ConfigError
from skillweave.resources import resource_path
from skillweave.rules import quality  # noqa: F401  (registers the shared guards)
from skillweave.rules.common import RULES, RuleResult, Sample, rule

__all__ = ["RULES", "RULE_FILES", "RuleResult", "RuleSet", "Sample", "load_rule_set", "rule"]

RULE_FILES = tuple(Path(__file__).parent / f for f in ("__init__.py", "common.py", "quality.py"))
"""The rule-set machinery and the shared guards: every rule-scored eval task's key hashes them."""


@dataclass(frozen=True)
class RuleSet:
    domain: str
    rules: tuple[tuple[str, Callable[[Sample], RuleResult]], ...]
    """(rule name, rule bound to its kwargs), in file order."""

    def score(self, sample: Sample) -> dict:
        """All rules on one sample: passed = every rule passed, score = the mean rule score."""
        results = {name: fn(sample) for name, fn in self.rules}
        return {
            "passed": all(r.passed for r in results.values()),
            "score": sum(r.score for r in results.values()) / len(results),
            "rules": {name: {"passed": r.passed, "score": r.score, "reason": r.reason} for name, r in results.items()},
        }


def load_rule_set(domain: str, path: str | Path | None = None) -> RuleSet:
    """Build the rule set of `domain` from `path` (default: the rules/ folder's `<domain>.yaml`).

    Raises:
        ConfigError: no such file (the message lists the available rule sets), malformed YAML, an unknown rule (with a did-you-mean) or a keyword argument the
            rule does not take; one line naming the file.
    """
    path = Path(path) if path is not None else resource_path("rules", f"{domain}.yaml")
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(
            f"{path}: no rule set for domain {domain!r}; available in {path.parent}: {', '.join(available) or 'none'}"
        )
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(spec, dict) or set(spec) != {"rules"} or not isinstance(spec["rules"], list) or not spec["rules"]:
        raise ConfigError(f"{path}: expected exactly one key, 'rules', holding a non-empty list")
    rules: list[tuple[str, Callable[[Sample], RuleResult]]] = []
    for i, entry in enumerate(spec["rules"], start=1):
        if not isinstance(entry, dict) or "name" not in entry or not set(entry) <= {"name", "kwargs"}:
            raise ConfigError(f"{path}: rule #{i} must be a mapping with 'name' and optional 'kwargs', got {entry!r}")
        name, kwargs = entry["name"], entry.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{path}: rule {name!r}: kwargs must be a mapping, got {kwargs!r}")
        if any(name == seen for seen, _ in rules):
            raise ConfigError(f"{path}: rule {name!r} is listed twice")
        try:
            factory = RULES.get(name)
        except KeyError as e:
            raise ConfigError(f"{path}: {e.args[0]}") from None
        try:
            rules.append((name, factory(**kwargs)))
        except TypeError as e:
            raise ConfigError(f"{path}: {e}") from None
    return RuleSet(domain, tuple(rules))
