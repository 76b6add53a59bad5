"""Delta-compression baselines the paper compares SkillZip with: BitDelta and Delta-CoMe.

Both compress a fine-tune's own delta Delta_k = theta_k - theta_0 against the original backbone (no
merged backbone, no residual), one 2-D linear weight of the decoder blocks at a time; the other
parameters of Delta_k (embeddings, norms) are dropped, as in the papers. SkillZip keeps the
embedding's residual at a low rank by default (zip.embedding_rank=8, 0.6 MB on SmolLM2-135M; its KL
effect there is ~2% of the skillpack's own); `zip=no_embedding` compares all three on the same tensors.

BitDelta (Liu et al. 2024, arXiv 2402.10193): Delta ~ alpha * sign(Delta), one scale per matrix,
initialised to mean|Delta| (the Frobenius-optimal scale for fixed signs), then the scales alone are
distilled so that base + alpha * sign matches the fine-tuned model's logits (MSE).

Delta-CoMe (Ping et al. 2024, arXiv 2406.08903), our simplification (`delta_come_compress`): the
truncated SVD of Delta, the singular vectors with the largest singular values kept at higher
precision. Faithful: mixed precision by singular value rank, the budget of BitDelta (1 bit per delta
entry), singular vectors quantized rather than the delta. Not faithful: two precisions (8 and 4 bits,
our quant.py) where the paper also uses 3 and 2; round-to-nearest per-row quantization where the paper
uses GPTQ with calibration data; the singular values folded into both factors (A = U S^1/2,
B = S^1/2 V^T, as SkillZip does) rather than kept apart in 16 bits; the 1/4 : 3/4 split of the budget
between the 8-bit and 4-bit vectors is ours.
"""

from __future__ import annotations

import torch
from torch import nn

from .zip.quant import dequantize, pack_int4, quantize_per_channel, unpack_int4
from .zip.svd import low_rank_factors

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


def bitdelta_compress(delta: dict[str, torch.Tensor], linear_names) -> dict:
    """BitDelta of the 2-D weights `<name>.weight` of the modules `linear_names` in `delta`.

    Returns:
        {"signs": {key: uint8 (out, ceil(in/8))}, "scales": {key: float32 0-d}, "shapes": {key: (out, in)}}
        with scale = mean|Delta|, which minimises ||Delta - alpha * sign(Delta)||_F
        (d/dalpha = 0 gives alpha = <Delta, sign> / numel). Zero entries get sign +1.
    """
    out: dict = {"signs": {}, "scales": {}, "shapes": {}}
    for name in sorted(linear_names):
        key = f"{name}.weight"
        w = delta[key].float()
        out["signs"][key] = pack_signs(w)
        out["scales"][key] = w.abs().mean()
        out["shapes"][key] = tuple(w.shape)
    return out


def bitdelta_reconstruct(compressed: dict) -> dict[str, torch.Tensor]:
    """Delta ~ alpha * sign per key, float32."""
    return {
        key: unpack_signs(packed, compressed["shapes"][key][-1]) * compressed["scales"][key]
        for key, packed in compressed["signs"].items()
    }


def bitdelta_nbytes(compressed: dict) -> int:
    """Bytes held: the packed signs and the scales (shapes are metadata, not tensors)."""
    tensors = list(compressed["signs"].values()) + list(compressed["scales"].values())
    return sum(t.numel() * t.element_size() for t in tensors)


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    err = (student - teacher).pow(2).mean(-1)
    if mask is None:
        return err.mean()
    mask = mask.to(err.dtype)
    return (err * mask).sum() / mask.sum()


def distill_bitdelta_scales(
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
        signs, scales: as `bitdelta_compress` returns them.
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


def _budget_ranks(out_features: int, in_features: int) -> tuple[int, int]:
    """(rank at 8 bits, rank at 4 bits) within BitDelta's out*in/8 bytes: about 1/4 of them (at least
    one vector, the leading one being what Delta-CoMe protects most) on 8-bit vectors at out + in bytes
    per rank, the rest on 4-bit ones at (out + in) / 2; capped at full rank."""
    budget, width = out_features * in_features // 8, out_features + in_features
    full = min(out_features, in_features)
    r8 = min(max(1, budget // 4 // width), full, budget // width)
    r4 = min((budget - r8 * width) * 2 // width, full - r8)
    return r8, r4


def delta_come_compress(delta: dict[str, torch.Tensor], linear_names) -> dict:
    """Delta-CoMe-style mixed precision (see the module docstring for what is ours).

    Per key `<name>.weight`: the truncated SVD A B (A = U S^1/2, B = S^1/2 V^T) with the ranks of
    `_budget_ranks`; the leading r8 columns of A / rows of B quantized to INT8, the next r4 to INT4
    (packed two per byte along the last dim), each group with one float32 scale per row of A and of B.

    Returns:
        {key: {"shape": (out, in), "groups": [{"bits", "rank", "a", "a_scale", "b", "b_scale"}, ...]}}
    """
    out: dict = {}
    for name in sorted(linear_names):
        key = f"{name}.weight"
        w = delta[key].float()
        r8, r4 = _budget_ranks(*w.shape)
        a, b, _ = low_rank_factors(w, r8 + r4)
        groups, start = [], 0
        for bits, r in ((8, r8), (4, r4)):
            if r == 0:
                continue
            qa, sa = quantize_per_channel(a[:, start : start + r], bits, dim=0)
            qb, sb = quantize_per_channel(b[start : start + r], bits, dim=0)
            if bits == 4:
                qa, qb = pack_int4(qa), pack_int4(qb)
            groups.append({"bits": bits, "rank": r, "a": qa, "a_scale": sa, "b": qb, "b_scale": sb})
            start += r
        out[key] = {"shape": tuple(w.shape), "groups": groups}
    return out


def delta_come_reconstruct(compressed: dict) -> dict[str, torch.Tensor]:
    """Delta ~ sum over precision groups of dequantized A_g B_g, float32."""
    out = {}
    for key, entry in compressed.items():
        total = torch.zeros(entry["shape"])
        for g in entry["groups"]:
            qa, qb = g["a"], g["b"]
            if g["bits"] == 4:
                qa, qb = unpack_int4(qa, g["rank"]), unpack_int4(qb, entry["shape"][1])
            total += dequantize(qa, g["a_scale"]) @ dequantize(qb, g["b_scale"])
        out[key] = total
    return out


def delta_come_nbytes(compressed: dict) -> int:
    """Bytes held: the integer factors (INT4 packed) and their scales."""
    return sum(
        g[t].numel() * g[t].element_size()
        for entry in compressed.values()
        for g in entry["groups"]
        for t in ("a", "a_scale", "b", "b_scale")
    )
