"""Truncated SVD of a residual weight: the low-rank half of SkillZip.

A residual W (out x in) is replaced by A (out x r) and B (r x in) with W ~ A B. The singular values
are split evenly, A = U_r S_r^(1/2) and B = S_r^(1/2) V_r^T, so that A and B have similar dynamic
ranges and quantize equally well (the paper's choice; a one-sided split puts all of S into one factor).
"""

from __future__ import annotations

import torch


def low_rank_factors(
    w: torch.Tensor, rank: int, energy: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-`rank` factors of `w` and the error they leave.

    Args:
        w: a 2-D matrix (out x in), any float dtype; the SVD runs in float32 on w's device.
        rank: the wanted rank, capped at min(out, in).
        energy: when given, the rank is the smallest that keeps this share of the squared Frobenius
            norm (`energy_rank`), still capped at `rank`: layers whose residual is nearly low-rank
            then cost fewer bytes.

    Returns:
        (A, B, err): A is out x r, B is r x in (float32), err = ||W - A B||_F. By Eckart-Young err is
        the smallest any rank-r approximation can reach (see `eckart_young_bound`).

    Raises:
        ValueError: w is not 2-D or rank < 1.
    """
    if w.ndim != 2:
        raise ValueError(f"low_rank_factors needs a 2-D matrix, got shape {tuple(w.shape)}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    w = w.float()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = min(rank, *w.shape)
    if energy is not None:
        r = min(r, energy_rank(s, energy))
    root = s[:r].sqrt()
    a = u[:, :r] * root
    b = root[:, None] * vh[:r]
    err = torch.linalg.matrix_norm(w - a @ b).item()
    return a, b, err


def eckart_young_bound(w: torch.Tensor, rank: int) -> float:
    """sqrt(sum of sigma_i^2 for i > rank): the least Frobenius error of any rank-`rank` approximation.

    Computed in float64, as a reference for `low_rank_factors`' float32 result.
    """
    s = torch.linalg.svdvals(w.double())
    return s[rank:].pow(2).sum().sqrt().item()


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """Smallest r whose top-r singular values keep `energy` of sum(sigma^2) (the squared Frobenius
    norm): ||W - W_r||_F^2 <= (1 - energy) ||W||_F^2. At least 1.

    Args:
        s: singular values, descending.
        energy: the share to keep, in (0, 1].
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    e = s.double().pow(2)
    kept = torch.cumsum(e, 0) / e.sum()
    # a float's last cumulative share can fall a hair short of 1.0: energy=1.0 means every value
    return min(int((kept < energy - 1e-12).sum().item()) + 1, len(s))
