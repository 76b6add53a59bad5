"""Prompt sources: the registries and helpers every domain's source uses (the sources live in their
domains, skillweave/domains/<domain>/source.py).

Every source is `fn(n, seed, **kwargs) -> list[dict]` with rows
`{"id": content hash of the prompt, "prompt": the user message (no chat template), "meta": dict}`:
the same seed gives the same rows, prompts are distinct, and a source that cannot produce `n`
distinct prompts raises DataError (SourceExhausted). `meta` holds what the domain's rules need (rules/<domain>.yaml).
A source is prefix-stable: its first n rows for a seed are the first n of any longer draw with that
seed, so online DPO round r can take rows r*n .. (r+1)*n - 1 and see prompts no earlier round saw.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any, Callable, Optional

from skillweave.core.errors import ConfigError, DataError
from skillweave.core.registry import Registry

log = logging.getLogger(__name__)

PROMPT_SOURCES: Registry[Callable[..., list[dict]]] = Registry("prompt source")
SOURCE_VERSIONS: dict[str, object] = {}
"""Sources whose rows can change under the same name and settings declare a version here when they
register (code_tasks: the digest of its tasks.jsonl; math_reasoning_gym: a number bumped by hand); the
generate stage puts it in its artifact key, so samples of an older table are not reused."""
REFERENCE_ANSWERS: Registry[Callable[[str], Optional[str]]] = Registry("reference answer source")
"""Per prompt source name: prompt text -> a correct answer in the form the model should give, or None
(filter.strategy=reference_vs_fail)."""


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def row(prompt: str, meta: dict) -> dict:
    return {"id": prompt_id(prompt), "prompt": prompt, "meta": meta}


def check_n(n: int, source: str) -> None:
    if n <= 0:
        raise DataError(f"{source}: n must be positive, got {n}")


class SourceExhausted(DataError):
    """A finite source was asked for more prompts than it has (`available`)."""

    def __init__(self, source: str, available: int, n: int):
        super().__init__(f"{source}: could produce only {available} distinct prompts, {n} were asked for")
        self.available = available


def take(rows: list[dict], n: int, source: str) -> list[dict]:
    if len(rows) < n:
        raise SourceExhausted(source, len(rows), n)
    return rows[:n]


TEMPLATE_DRAW = 256
"""Rows of a source's draw that the contamination check reads its template wording from."""


def template_draw(name: str, seed: int, kwargs: Mapping[str, Any]) -> list[dict]:
    """The first TEMPLATE_DRAW rows of a source's seeded draw, or all of a smaller source: wording
    many of them share is the source's template, which a small slice alone cannot tell apart from a
    leaked eval item (a code task whose family has a held-out sibling)."""
    source = PROMPT_SOURCES.get(name)
    try:
        return source(TEMPLATE_DRAW, seed, **kwargs)
    except SourceExhausted as exhausted:
        return source(exhausted.available, seed, **kwargs)






def check_source(name: str, kwargs: Mapping[str, Any]) -> None:
    """A prompt source `name` exists and takes `kwargs` (checked when the generate stage is planned).

    Raises:
        UnknownChoice: no such source (did-you-mean). ConfigError: a keyword it does not take.
    """
    import inspect

    source = PROMPT_SOURCES.get(name, "domain.prompt_source.name")
    try:
        inspect.signature(source).bind(1, 0, **kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(source).parameters if p not in ("n", "seed")]
        raise ConfigError(
            f"domain.prompt_source.kwargs={dict(kwargs)}: {e}; {name} takes {', '.join(params) or 'no keyword arguments'}"
        ) from None
