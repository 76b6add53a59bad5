"""Attaching a skillpack to a model at inference, and detaching it.

`attach_skillpack` wraps each factored nn.Linear in a `SkillpackLinear` (base output + low-rank delta),
the embedding in a `SkillpackEmbedding` (and, with tied weights, the output head in a SkillpackLinear
of the same factors), and adds the dense residuals into their parameters; `detach_skillpack` undoes
all of it bit-exactly. The backbone's weights are never copied, so switching domains costs only the
skillpack itself. This is the model surgery, kept apart from the delta's numerics (kernels.py) and the
file format (format.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from skillweave.core.errors import SkillpackError
from skillweave.zip.format import QuantizedFactors, Skillpack, check_fingerprint
from skillweave.zip.kernels import SkillpackEmbedding, SkillpackLinear

_ATTACHMENT = "_skillweave_attachment"


@dataclass
class _Attachment:
    """What `detach_skillpack` needs to restore the backbone bit-exactly."""

    skillpack: Skillpack
    int_mm: bool
    modules: dict[str, nn.Module]
    """The original modules the attachment wrapped, by name."""
    dense_originals: dict[str, torch.Tensor]


def attached_domain(model: nn.Module) -> str | None:
    """The domain of the skillpack attached to `model`, or None."""
    attachment = getattr(model, _ATTACHMENT, None)
    return attachment.skillpack.domain if attachment is not None else None


def attached_skillpack(model: nn.Module) -> tuple[Skillpack, bool] | None:
    """The skillpack attached to `model` and whether it runs the integer path, or None."""
    attachment = getattr(model, _ATTACHMENT, None)
    return None if attachment is None else (attachment.skillpack, attachment.int_mm)


@contextmanager
def backbone_modules(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with its attached skillpack's wrappers swapped back for the original modules while the
    block runs, the dense residuals left in: the base weights of a server that takes the factors as a
    LoRA (skillweave.engines). Nothing is copied; the wrappers return on exit, whatever happens.

    Raises:
        SkillpackError: no skillpack is attached.
    """
    attachment = getattr(model, _ATTACHMENT, None)
    if attachment is None:
        raise SkillpackError("no skillpack is attached to this model")
    wrappers = {name: model.get_submodule(name) for name in attachment.modules}
    for name, module in attachment.modules.items():
        model.set_submodule(name, module)
    try:
        yield model
    finally:
        for name, wrapper in wrappers.items():
            model.set_submodule(name, wrapper)


def tied_head(model: nn.Module, embedding: nn.Embedding) -> tuple[str, nn.Linear] | None:
    """The output head's name and module when its weight is `embedding`'s (tied), else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.weight is not embedding.weight:
        return None
    return next(name for name, m in model.named_modules() if m is head), head


def attach_skillpack(
    model: nn.Module, sp: Skillpack, *, expected_fingerprint: str | None = None, int_mm: bool = False
) -> None:
    """Apply skillpack `sp` to `model` in place; everything is checked before anything changes.

    Each factored nn.Linear is replaced by a SkillpackLinear wrapping it, a factored nn.Embedding by a
    SkillpackEmbedding and, when the output head shares its weight, the head by a SkillpackLinear of
    the same factors; each dense residual is added into its parameter, whose original value is kept
    for `detach_skillpack`.

    Raises:
        SkillpackError: a skillpack is already attached (detach it first), the fingerprint differs
            from `expected_fingerprint`, a name or shape in `sp` does not match the model, or the
            model's embeddings are tied and the skillpack's are not (or the other way round).
    """
    if attached_domain(model) is not None:
        raise SkillpackError(
            f"skillpack {attached_domain(model)!r} is already attached; detach_skillpack(model) before "
            f"attaching {sp.domain!r}"
        )
    source = f"{sp.domain!r}"
    check_fingerprint(sp, expected_fingerprint, source)
    modules: dict[str, nn.Module] = {}
    for name, f in sp.factors.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SkillpackError(
                f"skillpack {source} has factors for {name}, which this model lacks"
            ) from None
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            raise SkillpackError(
                f"skillpack {source}: {name} is a {type(module).__name__}, not an nn.Linear or nn.Embedding"
            )
        shape = (f.out_features, f.in_features)
        if tuple(module.weight.shape) != shape:
            raise SkillpackError(
                f"skillpack {source}: factors of {name} make a {shape} delta, the layer is "
                f"{tuple(module.weight.shape)}"
            )
        modules[name] = module
    heads: dict[str, tuple[nn.Linear, QuantizedFactors]] = {}
    for name, module in modules.items():
        if not isinstance(module, nn.Embedding):
            continue
        tied = tied_head(model, module)
        if (tied is not None) != sp.tied_embeddings:
            made, has = ("tied", "does not share") if sp.tied_embeddings else ("untied", "shares")
            raise SkillpackError(
                f"skillpack {source} was made for {made} embeddings; this model's output head {has} {name}'s weight"
            )
        if tied is not None:
            if tied[0] in modules:
                raise SkillpackError(f"skillpack {source} has factors for both {name} and {tied[0]}, which are tied")
            heads[tied[0]] = (tied[1], sp.factors[name])
    params: dict[str, nn.Parameter] = {}
    for key, r in sp.dense.items():
        try:
            params[key] = model.get_parameter(key)
        except AttributeError:
            raise SkillpackError(
                f"skillpack {source} has a dense residual for {key}, which this model lacks"
            ) from None
        if params[key].shape != r.shape:
            raise SkillpackError(
                f"skillpack {source}: dense residual {key} is {tuple(r.shape)}, the parameter is "
                f"{tuple(params[key].shape)}"
            )

    wrappers: dict[str, nn.Module] = {
        name: SkillpackEmbedding(m, sp.factors[name])
        if isinstance(m, nn.Embedding)
        else SkillpackLinear(m, sp.factors[name], int_mm=int_mm)
        for name, m in modules.items()
    }
    for name, (head, f) in heads.items():
        wrappers[name] = SkillpackLinear(head, f, int_mm=int_mm)
        modules[name] = head
    dense_originals = {}
    with torch.no_grad():
        for key, p in params.items():
            dense_originals[key] = p.detach().clone()
            p.add_(sp.dense[key].to(p.device, p.dtype))
    for name, wrapper in wrappers.items():
        model.set_submodule(name, wrapper)
    setattr(model, _ATTACHMENT, _Attachment(sp, int_mm, modules, dense_originals))


def detach_skillpack(model: nn.Module) -> None:
    """Restore the backbone exactly as it was before `attach_skillpack` (same modules, same bits).

    Raises:
        SkillpackError: no skillpack is attached.
    """
    attachment = getattr(model, _ATTACHMENT, None)
    if attachment is None:
        raise SkillpackError("no skillpack is attached to this model")
    for name, module in attachment.modules.items():
        model.set_submodule(name, module)
    with torch.no_grad():
        for key, original in attachment.dense_originals.items():
            model.get_parameter(key).copy_(original)
    delattr(model, _ATTACHMENT)


@contextmanager
def skillpack_attached(
    model: nn.Module, sp: Skillpack, *, expected_fingerprint: str | None = None, int_mm: bool = False
) -> Iterator[nn.Module]:
    """`model` with `sp` attached for the block (`attach_skillpack`), restored on exit whatever happens."""
    attach_skillpack(model, sp, expected_fingerprint=expected_fingerprint, int_mm=int_mm)
    try:
        yield model
    finally:
        detach_skillpack(model)
