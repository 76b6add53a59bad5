"""A mixed-domain batch grouped per skillpack answers exactly as each domain served alone."""

from __future__ import annotations

import pytest
import torch
from test_zip import block_linear_names, tiny_model

from skillweave.zip import attach_skillpack, compress_residual, detach_skillpack
from skillweave.zip.routing import run_grouped


def skillpack_for(domain: str, seed: int):
    model = tiny_model()
    g = torch.Generator().manual_seed(seed)
    residual = {k: 0.05 * p.std().item() * torch.randn(p.shape, generator=g) for k, p in model.state_dict().items() if p.ndim == 2}
    # the embedding's residual too: its wrapper must come and go with each group as the linears' do
    return compress_residual(residual, block_linear_names(model), 8, 8, domain, "fp", embedding_rank=4)


def first_logits(model, prompts: list[str]) -> list[str]:
    """A stand-in for generation: each prompt's last-position logits, rendered exactly."""
    with torch.no_grad():
        return [repr(model(torch.tensor([[int(c) for c in p]])).logits[0, -1].tolist()) for p in prompts]


def test_grouped_batch_equals_each_domain_alone():
    torch.set_num_threads(1)
    model = tiny_model()
    packs = {"math": skillpack_for("math", 1), "code": skillpack_for("code", 2)}
    requests = [("math", "123"), ("code", "45"), ("math", "6789"), ("code", "1")]
    calls = []
    answers = run_grouped(model, requests, packs, lambda m, ps: calls.append(ps) or first_logits(m, ps), expected_fingerprint="fp")
    assert calls == [["123", "6789"], ["45", "1"]]  # one attach per domain present, order kept inside
    for (domain, prompt), answer in zip(requests, answers):
        attach_skillpack(model, packs[domain], int_mm=True)
        assert answer == first_logits(model, [prompt])[0]
        detach_skillpack(model)
    with pytest.raises(KeyError, match="no skillpack for domain 'poetry'; loaded: code, math"):
        run_grouped(model, [("poetry", "1")], packs, first_logits)
