"""What every rule shares: the result type, the registry of rule factories, and `not_truncated`.

A rule is a pure function `rule(sample, **kwargs) -> RuleResult`. The registry holds its factory:
`RULES.get(name)(**kwargs)` checks the keyword arguments against the rule's signature and returns
the rule bound with `functools.partial`, a function of the sample alone.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

from skillweave.core.registry import Registry

Sample = dict
"""{"prompt": str, "response": str, "meta": dict}; meta holds the domain data (gold answer, tests,
IFEval instruction ids and kwargs) and the generator's flags ("truncated")."""


@dataclass(frozen=True)
class RuleResult:
    passed: bool
    score: float
    """In [0, 1]; partial credit where the rule can measure it, else 0 or 1."""
    reason: str


RULES: Registry[Callable[..., Callable[[Sample], RuleResult]]] = Registry("rule")


def rule(name: str) -> Callable[[Callable[..., RuleResult]], Callable[..., RuleResult]]:
    """Register `fn(sample, **kwargs) -> RuleResult` under `name`; returns `fn` unchanged.

    The registered factory raises TypeError naming the rule and the offending keyword argument.
    """

    def deco(fn: Callable[..., RuleResult]) -> Callable[..., RuleResult]:
        signature = inspect.signature(fn)

        def factory(**kwargs) -> Callable[[Sample], RuleResult]:
            try:
                signature.bind({}, **kwargs)
            except TypeError as e:
                raise TypeError(f"rule {name!r}: {e}; it accepts {_keyword_params(signature)}") from None
            return functools.partial(fn, **kwargs)

        factory.__doc__ = fn.__doc__
        RULES.register(name)(factory)
        return fn

    return deco


def _keyword_params(signature: inspect.Signature) -> str:
    names = list(signature.parameters)[1:]
    return ", ".join(names) if names else "no arguments"


@rule("not_truncated")
def not_truncated(sample: Sample) -> RuleResult:
    """Fail a response cut off at the token limit: it must never become a chosen answer, or DPO
    teaches the model to stop mid-sentence.

    >>> not_truncated({"prompt": "", "response": "42", "meta": {"truncated": True}}).passed
    False
    """
    if sample["meta"].get("truncated"):
        return RuleResult(False, 0.0, "response hit the max token limit")
    return RuleResult(True, 1.0, "complete")
