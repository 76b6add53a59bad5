"""BitDelta (Liu et al. 2024, arXiv 2402.10193): Delta ~ alpha * sign(Delta), one scale per matrix.

The scale starts at mean|Delta| (the Frobenius-optimal scale for fixed signs); with a `Calibration` the
scales alone are then distilled so that base + alpha * sign matches the fine-tuned model's logits (MSE).
Only the 2-D weights of the block linears are kept; embeddings and norms are dropped, as in the paper.

Error bound 0.75 (at the initial scales): for fixed signs the relative error is
sqrt(1 - mean|D|^2 / mean(D^2)), sqrt(1 - 2/pi) = 0.60 for Gaussian entries; the contract test's low-rank
delta, whose entries have heavier tails, measures 0.65.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..core.compressors import CompressContext, Compressor, register_compressor
from ..deltas import add_delta

DISTILL_STEPS = 100
"""Adam steps on the scales; the paper runs 200 on 800 samples, ours are a handful of texts."""
DISTILL_LR = 5e-2
"""Relative to each scale's init (see distill_scales): the paper's 1e-4 on scales of ~1e-4 to 1e-3 is a
relative step of the same order; the lowest-loss scales are kept, so a large step is safe."""

_BIT_WEIGHTS = 2 ** torch.arange(8, dtype=torch.int16)


def pack_signs(sign: torch.Tensor) -> torch.Tensor:
    """Signs (any tensor; >= 0 counts as +1) packed 8 per byte along the last dim, bit j of byte i =
    element 8i + j being positive; the last dim is padded to a multiple of 8. torch has no 1-bit dtype.

    Returns:
        uint8 of shape (..., ceil(n / 8)); `unpack_signs(packed, n)` gives the signs back exactly.
    """
    bits = (sign >= 0).to(torch.int16)
    pad = -bits.shape[-1] % 8
    if pad:
        bits = nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*bits.shape[:-1], -1, 8)
    return (bits * _BIT_WEIGHTS).sum(-1).to(torch.uint8)


def unpack_signs(packed: torch.Tensor, n: int) -> torch.Tensor:
    """float32 +-1 of the first `n` signs packed by `pack_signs` along the last dim."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_signs takes uint8, got {packed.dtype}")
    bits = (packed.to(torch.int16)[..., None] >> torch.arange(8, dtype=torch.int16)) & 1
    return bits.flatten(-2)[..., :n].float() * 2 - 1


@dataclass
class BitDelta:
    signs: dict[str, torch.Tensor]
    """uint8 (out, ceil(in/8)) packed signs per weight key."""
    scales: dict[str, torch.Tensor]
    """float32 0-d alpha per weight key."""
    shapes: dict[str, tuple[int, int]]

    def reconstruct(self) -> dict[str, torch.Tensor]:
        return {key: unpack_signs(packed, self.shapes[key][-1]) * self.scales[key] for key, packed in self.signs.items()}

    def nbytes(self) -> int:
        """The packed signs and the scales."""
        tensors = list(self.signs.values()) + list(self.scales.values())
        return sum(t.numel() * t.element_size() for t in tensors)


def bitdelta(delta: dict[str, torch.Tensor], linear_names) -> BitDelta:
    """BitDelta of the weights `<name>.weight` of the modules `linear_names`, scales at mean|Delta|, which
    minimises ||Delta - alpha * sign(Delta)||_F (d/dalpha = 0 gives alpha = <Delta, sign> / numel). Zero
    entries get sign +1."""
    out = BitDelta({}, {}, {})
    for name in sorted(linear_names):
        key = f"{name}.weight"
        w = delta[key].float()
        out.signs[key] = pack_signs(w)
        out.scales[key] = w.abs().mean()
        out.shapes[key] = tuple(w.shape)
    return out


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    err = (student - teacher).pow(2).mean(-1)
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    return (err * mask).sum() / mask.sum()


def distill_scales(
    base_model: nn.Module,
    finetuned_model: nn.Module,
    signs: dict[str, torch.Tensor],
    scales: dict[str, torch.Tensor],
    batches: list[dict[str, torch.Tensor]],
    steps: int,
    lr: float,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """BitDelta's scale distillation: only the per-matrix scales are trained (Adam) so that the
    logits of base + alpha * sign match the fine-tuned model's (MSE over vocabulary and tokens).

    Each scale is trained as a multiple of its init (alpha = alpha_0 * m, m starting at 1): with Adam
    a step moves a parameter by about `lr`, and deltas differ by orders of magnitude between models,
    so one relative `lr` fits all; the paper trains alpha directly. Batch `step % len(batches)` is
    used at each step. Neither model is modified.

    Args:
        base_model: theta_0, whose `<name>.weight` parameters the keys of `signs` name.
        finetuned_model: theta_k, the teacher.
        signs, scales: as `BitDelta` holds them.
        batches: model inputs (input_ids, optional attention_mask: padding is left out of the loss).

    Returns:
        (scales, losses): the scales of the lowest loss seen, and the loss before each step plus the
        final one (losses[0] is the init's loss, min(losses) the returned scales').
    """
    from torch.func import functional_call

    params = dict(base_model.named_parameters())
    base = {k: params[k].detach() for k in signs}
    sign = {k: unpack_signs(v, base[k].shape[-1]).to(base[k].dtype) for k, v in signs.items()}
    init = {k: scales[k].detach().float() for k in signs}
    mult = {k: torch.ones((), requires_grad=True) for k in signs}
    with torch.no_grad():
        teacher = [finetuned_model(**b).logits for b in batches]

    def loss_of(i: int) -> torch.Tensor:
        weights = {k: base[k] + (init[k] * mult[k]) * sign[k] for k in signs}
        logits = functional_call(base_model, weights, args=(), kwargs=batches[i], strict=False).logits
        return _masked_mse(logits, teacher[i], batches[i].get("attention_mask"))

    def full_loss() -> float:
        with torch.no_grad():
            return sum(float(loss_of(i)) for i in range(len(batches))) / len(batches)

    opt = torch.optim.Adam(mult.values(), lr=lr)
    losses = [full_loss()]
    best = (losses[0], {k: m.detach().clone() for k, m in mult.items()})
    for step in range(steps):
        loss = loss_of(step % len(batches))
        opt.zero_grad()
        loss.backward()
        opt.step()
        # The full calibration loss is cheap next to the step on the small sets used here, and it is
        # what keeps the returned scales from being worse than the init.
        losses.append(full_loss())
        if losses[-1] < best[0]:
            best = (losses[-1], {k: m.detach().clone() for k, m in mult.items()})
    return {k: init[k] * best[1][k] for k in signs}, losses


def compress(delta: dict[str, torch.Tensor], ctx: CompressContext) -> BitDelta:
    """BitDelta of the block linears; with `ctx.calibration`, scales distilled against its model + `delta`."""
    out = bitdelta(delta, ctx.linear_names)
    if ctx.calibration is not None:
        base = ctx.calibration.model
        teacher = add_delta(copy.deepcopy(base), delta)
        scales, _ = distill_scales(base, teacher, out.signs, out.scales, ctx.calibration.batches, DISTILL_STEPS, DISTILL_LR)
        out = replace(out, scales=scales)
    return out


register_compressor("bitdelta", Compressor(
    compress=compress, rel_error_bound=0.75, settings={"distill_steps": DISTILL_STEPS, "distill_lr": DISTILL_LR},
))
