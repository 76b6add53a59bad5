"""CAT composition of any skillpacks (LoRA Soups, arXiv 2410.13025; METHOD.md section 2).

Several skills, each trained alone, act together: W + sum_k alpha[k, module] A_k B_k, with the weights
alpha learned on a few dozen examples of the composed task while the backbone and every factor stay
frozen. One alpha per (skill, module): the paper's per-layer weights, where a layer is every weight a
skill adapts.

Convention, everywhere here (the same as `LowRank.factors()` and the skillpack format): a skill's delta
of a weight W (rows x cols, as stored by torch) is A @ B with A rows x r and B r x cols, float32.
- SkillZip skillpack: A = dequantized A, B = dequantized B diag(s)^-1 (smoothing folded in), exactly
  what `SkillpackLinear` serves on its fp path; the embedding's factors (vocab x r, r x hidden) are a
  low-rank delta of the embedding weight, and with tied weights they stand for the head's as well
  (as in `export_skillpack`). Its dense 1-D residuals (norm weights, biases) are composed too, with
  the alpha of the module they belong to, so that one skillpack at alpha 1 is `attach_skillpack`.
- PEFT LoRA adapter: A = (lora_alpha / r) lora_B, B = lora_A; an embedding LoRA gives
  A = scale lora_embedding_A^T, B = lora_embedding_B^T.

A tied embedding and head are two modules here, each with its own alpha (as PEFT adapts them): exact in
the forward pass, but their merged deltas are one tensor in a tied model (see `merged_delta`).
Attaching wraps modules in place and keeps the originals by reference: no weight of the backbone is
copied or changed, and detaching puts the very same modules back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from .core.artifacts import tmp_path_for
from .core.errors import ArtifactError, DataError
from .lora_io import STAMP, adapter_tensors, lora_scale
from .zip.attach import attached_domain
from .zip.format import EMBEDDING, HEAD, Skillpack

FORMAT_VERSION = 1
HEADER_KEY = "skillweave-composition"
_ATTACHMENT = "_skillweave_composition"
_PEFT_PREFIX = "base_model.model."
_REDO = "retrain the composition (stage=cat) with the skills and backbone it is used with"

Factors = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LowRankSkill:
    """One skill as factors, whatever produced it: the common view CAT composes."""

    name: str
    source: str
    """"skillpack" or "peft"."""
    backbone_fingerprint: str | None
    """The backbone it was made for; None for an adapter without a skillweave stamp whose caller did not say."""
    factors: dict[str, Factors]
    """Module name -> (A rows x r, B r x cols), float32; the module weight's delta is A @ B."""
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    """Parameter name -> float32 residual of a 1-D parameter (norm weight, bias)."""

    def digest(self) -> str:
        """sha256 of the factors and dense residuals (names, shapes, float32 values): the identity a saved
        composition records, the same however the skill was stored."""
        h = hashlib.sha256()
        parts = [(f"{m}.{i}", t) for m in sorted(self.factors) for i, t in enumerate(self.factors[m])]
        for key, t in parts + sorted(self.dense.items()):
            h.update(f"{key}{tuple(t.shape)}".encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def from_skillpack(sp: Skillpack) -> LowRankSkill:
    """The skillpack's dequantized factors (the fp path of `attach_skillpack`) and dense residuals."""
    factors = {name: (f.a(), f.b()) for name, f in sp.factors.items()}
    if sp.tied_embeddings and EMBEDDING in factors:
        factors[HEAD] = factors[EMBEDDING]
    dense = {k: t.float() for k, t in sp.dense.items()}
    return LowRankSkill(sp.domain, "skillpack", sp.backbone_fingerprint, factors, dense)


def from_peft_adapter(
    adapter_dir: str | os.PathLike, backbone_fingerprint: str | None = None, name: str | None = None
) -> LowRankSkill:
    """A PEFT LoRA adapter directory (linear and embedding LoRAs) as factors.

    The backbone is the one in the adapter's skillweave stamp (the lora stage writes it), else
    `backbone_fingerprint`; `name` defaults to the stamp's domain, else the directory's name.

    Raises:
        ArtifactError: the stamp names another backbone than `backbone_fingerprint`, the adapter holds
            tensors other than LoRA factors (trained biases, modules_to_save), or one scale does not
            describe it (`lora_scale`).
    """
    adapter_dir = Path(adapter_dir)
    stamp = json.loads((adapter_dir / STAMP).read_text()) if (adapter_dir / STAMP).is_file() else {}
    stamped = stamp.get("backbone_fingerprint")
    if stamped and backbone_fingerprint and stamped != backbone_fingerprint:
        raise ArtifactError(
            f"{adapter_dir} is a LoRA adapter of backbone {stamped}, not of {backbone_fingerprint}: "
            "rerun the lora stage for this model"
        )
    scale = lora_scale(adapter_dir)
    tensors = {k.removeprefix(_PEFT_PREFIX): t.float() for k, t in adapter_tensors(adapter_dir).items()}
    factors = {}
    for key, t in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            factors[module] = (scale * tensors[f"{module}.lora_B.weight"], t)
        elif key.endswith(".lora_embedding_A"):
            module = key.removesuffix(".lora_embedding_A")
            factors[module] = (scale * t.T, tensors[f"{module}.lora_embedding_B"].T)
        elif not key.endswith((".lora_B.weight", ".lora_embedding_B")):
            raise ArtifactError(
                f"{adapter_dir} holds {key}, which is not a LoRA factor; compose adapters trained with bias='none' "
                "and no modules_to_save"
            )
    name = name or stamp.get("domain") or adapter_dir.name
    return LowRankSkill(name, "peft", stamped or backbone_fingerprint, factors)


def _module_params(skills: Sequence[LowRankSkill]) -> dict[str, set[str]]:
    """Every module some skill adapts -> the names, within it, of the parameters its dense residuals move."""
    modules: dict[str, set[str]] = {m: set() for s in skills for m in s.factors}
    for s in skills:
        for key in s.dense:
            module, _, param = key.rpartition(".")
            modules.setdefault(module, set()).add(param)
    return dict(sorted(modules.items()))


class _Composed(nn.Module):
    """A module of the backbone (held by reference) with its K skills' weights alpha and dense residuals.

    A dense residual moves a parameter of `base` for the forward pass only (base.p + sum_k alpha_k d_k
    through functional_call), so base's parameters are never written.
    """

    def __init__(self, base: nn.Module, alpha: nn.Parameter, dense: Sequence[dict[str, torch.Tensor]] = ()) -> None:
        super().__init__()
        self.base = base
        self.alpha = alpha
        self.dense_names = sorted({n for d in dense for n in d})
        for n in self.dense_names:
            p = getattr(base, n)
            stacked = torch.stack([d[n].detach().float() if n in d else torch.zeros(p.shape) for d in dense])
            self.register_buffer(f"dense_{n}", stacked.to(p.device), persistent=False)

    def base_forward(self, *args, **kwargs):
        if not self.dense_names:
            return self.base(*args, **kwargs)
        moved = {}
        for n in self.dense_names:
            p = getattr(self.base, n)
            moved[n] = p + (self.alpha @ getattr(self, f"dense_{n}")).to(p.dtype)
        return functional_call(self.base, moved, args, kwargs)

    def extra_repr(self) -> str:
        return f"skills={self.alpha.shape[0]}, dense={self.dense_names}"


def _concatenated(factors: Sequence[Factors | None], dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
    """CAT's concatenation: A_cat = [A_1 .. A_K], B_cat = [B_1; ..; B_K], and the skill of every rank index."""
    present = [(k, f) for k, f in enumerate(factors) if f is not None]
    a = torch.cat([f[0].detach() for _, f in present], dim=1).to(device, dtype)
    b = torch.cat([f[1].detach() for _, f in present], dim=0).to(device, dtype)
    skill = torch.cat([torch.full((f[1].shape[0],), k) for k, f in present]).to(device)
    return a, b, skill


class ComposedLinear(_Composed):
    """base(x) + sum_k alpha_k (x B_k^T) A_k^T, as one pair of GEMMs over the concatenated factors
    (each rank index scaled by its skill's alpha), plus the skills' bias residuals; a skill without
    factors here (None) adds nothing."""

    def __init__(
        self,
        base: nn.Linear,
        factors: Sequence[Factors | None],
        alpha: nn.Parameter,
        dense: Sequence[dict[str, torch.Tensor]] = (),
    ) -> None:
        super().__init__(base, alpha, dense)
        a, b, skill = _concatenated(factors, base.weight.dtype, base.weight.device)
        for n, t in {"a": a, "b": b, "rank_skill": skill}.items():
            self.register_buffer(n, t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.b) * self.alpha[self.rank_skill].to(x.dtype)
        return self.base_forward(x) + F.linear(h, self.a)


class ComposedEmbedding(_Composed):
    """base(ids) + sum_k alpha_k A_k[ids] B_k, A and B in float32 as in `SkillpackEmbedding`."""

    def __init__(self, base: nn.Embedding, factors: Sequence[Factors | None], alpha: nn.Parameter) -> None:
        super().__init__(base, alpha)
        a, b, skill = _concatenated(factors, torch.float32, base.weight.device)
        for n, t in {"a": a, "b": b, "rank_skill": skill}.items():
            self.register_buffer(n, t, persistent=False)

    @property
    def weight(self) -> nn.Parameter:
        """The backbone's embedding weight (what `model.get_input_embeddings().weight` callers want)."""
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids)
        rows = self.a[ids] * self.alpha[self.rank_skill]
        return out + (rows @ self.b).to(out.dtype)


class ComposedParams(_Composed):
    """A module without factors whose parameters the skills' dense residuals move (a norm)."""

    def forward(self, *args, **kwargs):
        return self.base_forward(*args, **kwargs)


@dataclass
class Composition:
    """K skills and their weights alpha, a (K,) parameter per module (the same one for every module when
    they are shared); attached, the wrappers hold these very parameters."""

    skills: list[LowRankSkill]
    alpha: dict[str, nn.Parameter]
    backbone_fingerprint: str | None

    def parameters(self) -> list[nn.Parameter]:
        """The distinct weights: one per module, or one shared by all (per_module=False)."""
        return list({id(p): p for p in self.alpha.values()}.values())

    def alphas(self) -> dict[str, torch.Tensor]:
        """Module name -> a float32 copy of its K weights, on the CPU."""
        return {m: a.detach().float().cpu().clone() for m, a in self.alpha.items()}


def _common_fingerprint(skills: Sequence[LowRankSkill], expected: str | None) -> str | None:
    found = {s.backbone_fingerprint for s in skills}
    if expected is not None and found != {expected}:
        odd = next(s for s in skills if s.backbone_fingerprint != expected)
        raise ArtifactError(
            f"skill {odd.name!r} was made for backbone {odd.backbone_fingerprint}, this model is {expected}; "
            "compose skills of this backbone (an unstamped adapter: pass backbone_fingerprint= to from_peft_adapter)"
        )
    if len(found) > 1:
        raise ArtifactError(
            f"the skills were made for different backbones {sorted(map(str, found))}; compose skills of one backbone"
        )
    return found.pop()


def _initial_alpha(alpha_init, modules: Sequence[str], k: int) -> dict[str, torch.Tensor]:
    if isinstance(alpha_init, dict):
        if set(alpha_init) != set(modules):
            odd = sorted(set(alpha_init) ^ set(modules))
            raise ArtifactError(f"alpha_init and the skills disagree on modules {odd[:5]}; {_REDO}")
        init = {m: torch.as_tensor(alpha_init[m], dtype=torch.float32).clone() for m in modules}
    else:
        values = torch.as_tensor(alpha_init, dtype=torch.float32)
        init = {m: (values.expand(k) if values.ndim == 0 else values).clone() for m in modules}
    if any(t.shape != (k,) for t in init.values()):
        raise ValueError(f"alpha_init must give {k} weights per module (one per skill)")
    return init


def attach_composition(
    model: nn.Module,
    skills: Sequence[LowRankSkill],
    alpha_init: float | Sequence[float] | dict[str, torch.Tensor] = 1.0,
    *,
    expected_fingerprint: str | None = None,
    per_module: bool = True,
) -> Composition:
    """Compose `skills` into `model` in place; everything is checked before anything changes.

    Each module some skill adapts is wrapped: an nn.Linear in a ComposedLinear, an nn.Embedding in a
    ComposedEmbedding, a module moved only by dense residuals (a norm) in a ComposedParams.

    Args:
        alpha_init: 1.0 is CAT's start (the plain sum); a float or one per skill for every module, or
            module name -> K weights (`Composition.alphas()` of a trained or loaded composition).
        expected_fingerprint: when given, the backbone every skill must have been made for.
        per_module: one (K,) weight per module (the paper's per-layer weights), or False: one (K,) weight
            shared by every module (K numbers in all: what a few dozen examples can pin down without
            over-fitting); alpha_init must then be the same for every module.

    Raises:
        ArtifactError: no skills, a composition or skillpack is already attached, the skills belong to
            other or different backbones, or a name or shape does not match the model.
    """
    if not skills:
        raise ValueError("attach_composition needs at least one skill")
    if getattr(model, _ATTACHMENT, None) is not None or attached_domain(model) is not None:
        raise ArtifactError("a composition or skillpack is already attached; detach it before composing")
    fingerprint = _common_fingerprint(skills, expected_fingerprint)
    modules = _module_params(skills)
    bases: dict[str, nn.Module] = {}
    for name, params in modules.items():
        try:
            bases[name] = module = model.get_submodule(name)
        except AttributeError:
            raise ArtifactError(
                f"a skill adapts {name}, which this model lacks; compose skills of this backbone"
            ) from None
        adapted = any(name in s.factors for s in skills)
        if adapted and not isinstance(module, (nn.Linear, nn.Embedding)):
            raise ArtifactError(
                f"a skill has factors for {name}, a {type(module).__name__}, not an nn.Linear or nn.Embedding"
            )
        if isinstance(module, nn.Embedding) and params:
            raise ArtifactError(f"a skill has dense residuals for the embedding {name}; only its factors compose")
        for s in skills:
            if name in s.factors:
                a, b = s.factors[name]
                if (a.shape[0], b.shape[1]) != tuple(module.weight.shape) or a.shape[1] != b.shape[0]:
                    raise ArtifactError(
                        f"skill {s.name!r}: factors {tuple(a.shape)} x {tuple(b.shape)} of {name} do not make its "
                        f"{tuple(module.weight.shape)} weight; compose skills of this backbone"
                    )
            for p in params:
                d, target = s.dense.get(f"{name}.{p}"), getattr(module, p, None)
                if d is not None and (target is None or d.shape != target.shape):
                    raise ArtifactError(
                        f"skill {s.name!r}: dense residual {name}.{p} does not match the model; "
                        "compose skills of this backbone"
                    )
    device = next(model.parameters()).device
    init = _initial_alpha(alpha_init, list(modules), len(skills))
    if per_module:
        alpha = {m: nn.Parameter(init[m].to(device)) for m in modules}
    else:
        first = init[next(iter(modules))]
        if any(not torch.equal(t, first) for t in init.values()):
            raise ValueError("per_module=False shares one weight per skill across modules: give alpha_init the same for all")
        shared = nn.Parameter(first.to(device))
        alpha = {m: shared for m in modules}
    for name, params in modules.items():
        base = bases[name]
        factors = [s.factors.get(name) for s in skills]
        dense = [{p: s.dense[f"{name}.{p}"] for p in params if f"{name}.{p}" in s.dense} for s in skills]
        if isinstance(base, nn.Embedding):
            wrapper = ComposedEmbedding(base, factors, alpha[name])
        elif any(f is not None for f in factors):
            wrapper = ComposedLinear(base, factors, alpha[name], dense)
        else:
            wrapper = ComposedParams(base, alpha[name], dense)
        model.set_submodule(name, wrapper)
    composition = Composition(list(skills), alpha, fingerprint)
    setattr(model, _ATTACHMENT, composition)
    return composition


def attached_composition(model: nn.Module) -> Composition | None:
    """The composition attached to `model`, or None."""
    return getattr(model, _ATTACHMENT, None)


@contextmanager
def composition_backbone(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with its composition's wrappers swapped back for the backbone's modules while the block runs
    (its weights untouched: the backbone as it was), the wrappers back on exit whatever happens.

    Raises:
        ArtifactError: no composition is attached.
    """
    composition = attached_composition(model)
    if composition is None:
        raise ArtifactError("no composition is attached to this model")
    wrappers = {name: model.get_submodule(name) for name in composition.alpha}
    for name, wrapper in wrappers.items():
        model.set_submodule(name, wrapper.base)
    try:
        yield model
    finally:
        for name, wrapper in wrappers.items():
            model.set_submodule(name, wrapper)


def detach_composition(model: nn.Module) -> None:
    """Put back the modules `attach_composition` wrapped: the same objects, never modified.

    Raises:
        ArtifactError: no composition is attached.
    """
    composition = getattr(model, _ATTACHMENT, None)
    if composition is None:
        raise ArtifactError("no composition is attached to this model")
    for name in composition.alpha:
        model.set_submodule(name, model.get_submodule(name).base)
    delattr(model, _ATTACHMENT)


def merged_delta(composition: Composition) -> dict[str, torch.Tensor]:
    """Parameter name -> float32 sum_k alpha_k delta_k: the composition as one dense delta, for
    `add_delta`, a merge baseline or an SVD back to factors. A tied model's embedding and head are one
    tensor: `add_delta` adds only the delta under the name `named_parameters` lists (the embedding's)."""
    delta = {}
    for module, alpha in composition.alpha.items():
        w = alpha.detach().float().cpu()
        terms = [
            w[k] * (s.factors[module][0] @ s.factors[module][1])
            for k, s in enumerate(composition.skills)
            if module in s.factors
        ]
        if terms:
            delta[f"{module}.weight"] = sum(terms)
        for key in sorted({k for s in composition.skills for k in s.dense if k.rpartition(".")[0] == module}):
            delta[key] = sum(w[k] * s.dense[key] for k, s in enumerate(composition.skills) if key in s.dense)
    return delta


def _batch_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over answer tokens (labels != -100, else attention_mask) of the next-token cross-entropy
    against `labels`, or, when the batch has `target_logits` (B x T x V), of KL(target || model): a
    reference model's full distributions pin the weights down far better than its sampled tokens."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids, attention_mask=batch.get("attention_mask")).logits[:, :-1].float()
    if "labels" in batch:
        mask = batch["labels"][:, 1:] != -100
    else:
        mask = batch.get("attention_mask", torch.ones_like(ids))[:, 1:].bool()
    if not mask.any():
        raise DataError("a batch for train_alphas has no answer tokens (every label is -100)")
    if "target_logits" in batch:
        target = F.log_softmax(batch["target_logits"][:, :-1].float(), dim=-1)
        kl = (target.exp() * (target - F.log_softmax(logits, dim=-1))).sum(-1)
        return kl[mask].mean()
    return F.cross_entropy(logits[mask], batch["labels"][:, 1:][mask])


def train_alphas(
    model: nn.Module,
    composition: Composition,
    batches: Sequence[dict[str, torch.Tensor]],
    steps: int,
    lr: float = 0.05,
    *,
    seed: int = 0,
) -> dict:
    """Learn the composition's alphas (Adam, one batch a step) with the backbone and factors frozen.

    Batches hold input_ids, attention_mask, and labels (-100 on prompt tokens) and/or target_logits
    (see `_batch_loss`); they are visited in an order shuffled per epoch by `seed`. The model runs in
    eval mode (no dropout), so a seed gives the same alphas every time. The parameters' requires_grad
    and the model's mode are restored afterwards.

    Returns:
        steps, seconds, loss_before and loss_after (mean over all batches), curve (the mean training
        loss of each tenth of the steps).
    """
    if steps < 1 or not batches:
        raise ValueError("train_alphas needs steps >= 1 and at least one batch")
    device = next(model.parameters()).device
    batches = [{k: t.to(device) for k, t in b.items()} for b in batches]
    alphas = composition.parameters()
    flags = {p: p.requires_grad for p in model.parameters()} | {p: p.requires_grad for p in alphas}
    training = model.training
    started = time.time()
    try:
        for p in flags:
            p.requires_grad_(False)
        model.eval()
        with torch.no_grad():
            before = sum(_batch_loss(model, b).item() for b in batches) / len(batches)
        for p in alphas:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(alphas, lr=lr)
        generator = torch.Generator().manual_seed(seed)
        order: list[int] = []
        losses = []
        for _ in range(steps):
            if not order:
                order = torch.randperm(len(batches), generator=generator).tolist()
            loss = _batch_loss(model, batches[order.pop()])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        with torch.no_grad():
            after = sum(_batch_loss(model, b).item() for b in batches) / len(batches)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(training)
    chunk = math.ceil(steps / 10)
    curve = [sum(losses[i : i + chunk]) / len(losses[i : i + chunk]) for i in range(0, steps, chunk)]
    seconds = round(time.time() - started, 3)
    return {"steps": steps, "seconds": seconds, "loss_before": before, "loss_after": after, "curve": curve}


def save_composition(path: str | os.PathLike, composition: Composition, meta: dict | None = None) -> None:
    """One safetensors file: the alphas (K x modules) and, in its header, the backbone and each part's
    name, source, backbone and digest, so that `load_composition` can tell whether it is given the
    skills it was trained with. Written to a temp file and renamed (a killed job leaves no partial file)."""
    path = Path(path)
    modules = list(composition.alpha)
    header = {
        "format_version": FORMAT_VERSION,
        "backbone_fingerprint": composition.backbone_fingerprint,
        "parts": [
            {"name": s.name, "source": s.source, "backbone_fingerprint": s.backbone_fingerprint, "digest": s.digest()}
            for s in composition.skills
        ],
        "modules": modules,
        "meta": meta or {},
    }
    alphas = composition.alphas()
    tensors = {"alphas": torch.stack([alphas[m] for m in modules], dim=1).contiguous()}
    with tmp_path_for(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header)})


def load_composition(
    path: str | os.PathLike, skills: Sequence[LowRankSkill], expected_fingerprint: str | None = None
) -> tuple[Composition, dict]:
    """The composition in `path` over `skills` (in the order it was trained with), and its meta;
    `attach_composition(model, c.skills, c.alphas())` serves it.

    Raises:
        ArtifactError: the file is missing, corrupt or not a composition; it was trained for another
            backbone than `expected_fingerprint`; or `skills` are not its parts (missing, extra, changed).
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})[HEADER_KEY])
            alphas = f.get_tensor("alphas")
        parts, modules, fingerprint = header["parts"], header["modules"], header["backbone_fingerprint"]
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not a readable composition ({type(e).__name__}: {e}); {_REDO}") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"composition {path} has format_version {header.get('format_version')}, this skillweave reads "
            f"{FORMAT_VERSION}; {_REDO}"
        )
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise ArtifactError(
            f"composition {path} was trained for backbone {fingerprint}, this model is {expected_fingerprint}; {_REDO}"
        )
    if len(skills) != len(parts):
        raise ArtifactError(
            f"composition {path} has parts {[p['name'] for p in parts]}, given {[s.name for s in skills]}; "
            f"pass its parts in order, or {_REDO}"
        )
    for k, (part, s) in enumerate(zip(parts, skills)):
        # names are labels; a part is its content and its backbone
        if (part["backbone_fingerprint"], part["digest"]) != (s.backbone_fingerprint, s.digest()):
            raise ArtifactError(
                f"composition {path}: part {k} is {part['source']} {part['name']!r} (digest {part['digest'][:12]}), "
                f"given {s.source} {s.name!r} (digest {s.digest()[:12]}); pass its parts in order, or {_REDO}"
            )
    if list(_module_params(skills)) != modules or tuple(alphas.shape) != (len(parts), len(modules)):
        raise ArtifactError(f"composition {path}: its alphas do not fit its parts' modules; {_REDO}")
    alpha = {m: nn.Parameter(alphas[:, j].float().clone()) for j, m in enumerate(modules)}
    return Composition(list(skills), alpha, fingerprint), header["meta"]
