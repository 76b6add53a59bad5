"""Serving several domains from one backbone: a mixed batch is grouped per skillpack.

Requests are grouped by domain; each group runs with its skillpack attached (the backbone is never
copied), then the answers are put back in request order. Attaching costs a module swap per linear
layer, so a batch pays it once per domain present, not once per request.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import torch

from .attach import skillpack_attached
from .format import Skillpack


def run_grouped(
    model: torch.nn.Module,
    requests: Sequence[tuple[str, str]],
    skillpacks: dict[str, Skillpack],
    run_group: Callable[[torch.nn.Module, list[str]], list[str]],
    *,
    expected_fingerprint: str | None = None,
    int_mm: bool = True,
) -> list[str]:
    """Answers to `(domain, prompt)` requests, in order; `run_group(model, prompts)` answers one group.

    Raises:
        KeyError: a request names a domain with no skillpack (the message lists the loaded ones).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (domain, _) in enumerate(requests):
        if domain not in skillpacks:
            raise KeyError(f"no skillpack for domain {domain!r}; loaded: {', '.join(sorted(skillpacks))}")
        groups[domain].append(i)
    answers: list[str | None] = [None] * len(requests)
    for domain, idx in groups.items():
        with skillpack_attached(model, skillpacks[domain], expected_fingerprint=expected_fingerprint, int_mm=int_mm):
            for i, answer in zip(idx, run_group(model, [requests[i][1] for i in idx])):
                answers[i] = answer
    return answers  # type: ignore[return-value]
