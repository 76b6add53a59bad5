"""The shared delta of each merge method on hand-worked task vectors (mergekit in memory, zero base)."""

from __future__ import annotations

import pytest
import torch

from skillweave.config import MergeConfig
from skillweave.merging import shared_delta

DELTAS = {
    "a": {"w": torch.tensor([[4.0, -1.0, 2.0, -3.0]])},
    "b": {"w": torch.tensor([[-2.0, 3.0, 1.0, 0.5]])},
}


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


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ValueError, match="Valid: task_arithmetic, ties, dare_ties, dare_linear"):
        shared_delta(DELTAS, MergeConfig(method="slerp"))
