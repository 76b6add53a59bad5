"""The learned router (METHOD.md stage 3), and Twin-Merging's router-weighted exclusive experts.

Router. The paper routes with a small LM (Qwen2.5-0.5B) and a linear classification head over domains.
Ours reads the merged backbone itself (our choice: no second model is held; its bytes are the head's
alone): the features of a prompt are the backbone's last hidden states (after the final norm) over the
chat-templated prompt, mean-pooled over its tokens with padding masked out, standardised per feature;
the head is softmax regression trained full-batch with Adam and an L2 penalty on the weights, from
zero weights, so the same features always give the same router. It is saved as safetensors with the
domains in order and the fingerprint of the backbone its features come from: a router read on another
backbone sees features it was never trained on, so loading one for another backbone is refused.

Twin-Merging (Lu et al. 2024, arXiv 2406.15479), as the paper's baseline: the shared knowledge is the
merged backbone; each domain's exclusive knowledge, the residual R_k = Delta_k - Delta_shared of every
block linear, is kept as truncated-SVD factors A_k B_k in fp16 (the `twin` compressor); per input, the
router's softmax weights w over domains mix them: y = W x + sum_k w_k A_k B_k x. The weights are
computed once per generate() call, from the prompt at the prefill forward, and kept for that batch's
decode steps (one weight vector per batch row). Faithful: shared = merged model, exclusive = compressed
difference of each fine-tune from it, input-dependent mixing by a router trained on the domains' own
data. Not faithful: the paper merges the (decompressed) exclusive deltas into the weights per batch;
the forward hooks here add each row's mix to the linears' outputs, the same function without
materialising weights; 1-D residuals (norm weights) and embeddings are not part of the exclusive
knowledge (as BitDelta and Delta-CoMe drop them; the norms' residuals carry little of the delta's
norm).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .core.artifacts import tmp_path_for
from .core.errors import ArtifactError

FORMAT = "skillweave-router"
FORMAT_VERSION = 1
HEADER_KEY = "skillweave_router"
POOLING = "masked_mean_last_hidden"
"""Mean of the backbone's last hidden states over the prompt's (unpadded) tokens."""
_TENSORS = ("weight", "bias", "mean", "std")


class RouterError(ArtifactError):
    """A router file that cannot be used: missing, corrupt, another format or another backbone."""


@dataclass
class Router:
    """Softmax regression over standardised pooled features: p = softmax(W (f - mean) / std + b)."""

    domains: list[str]
    """The classes, in the order of the head's rows."""
    backbone_fingerprint: str
    """Fingerprint of the model whose hidden states are the features."""
    weight: torch.Tensor
    """float32 (K, H)."""
    bias: torch.Tensor
    """float32 (K,)."""
    mean: torch.Tensor
    """float32 (H,): per-feature mean of the training features."""
    std: torch.Tensor
    """float32 (H,): per-feature standard deviation of the training features (floored, never 0)."""
    pooling: str = POOLING
    meta: dict = field(default_factory=dict)
    """Free-form JSON: training settings and counts."""

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) class scores of (N, H) features."""
        z = (features.float() - self.mean.to(features.device)) / self.std.to(features.device)
        return z @ self.weight.to(features.device).T + self.bias.to(features.device)

    def probs(self, features: torch.Tensor) -> torch.Tensor:
        """(N, K) routing weights: the softmax over domains."""
        return self.logits(features).softmax(-1)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) index of the top-1 domain."""
        return self.logits(features).argmax(-1)


def router_nbytes(router: Router) -> int:
    """Bytes of the head and the standardisation held at inference."""
    return sum(getattr(router, name).nbytes for name in _TENSORS)


# ------------------------------------------------------------------------------------- features


@torch.no_grad()
def pooled_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, H) mean of `model`'s last hidden states over the tokens `attention_mask` keeps.

    Position ids come from the mask as generate() makes them (cumsum - 1), so a left-padded row gets
    the features of the same prompt unpadded.

    Args:
        model: a transformers causal LM (its `base_model` gives the hidden states) or a base model.
    """
    body = getattr(model, "base_model", model)
    mask = attention_mask.to(input_ids.device).long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float()


@torch.no_grad()
def prompt_features(
    model: nn.Module, tokenizer, prompts: Sequence[str], *, batch_size: int = 8, max_length: int = 1024
) -> torch.Tensor:
    """(N, H) pooled features of user messages, each wrapped in the chat template as the model reads it.

    Args:
        prompts: user messages (not yet templated).
        max_length: tokens kept per prompt (its beginning); a mean over the rest changes little.
    """
    from .models import chat_prompt

    texts = [chat_prompt(tokenizer, p) for p in prompts]
    out = []
    device = next(model.parameters()).device
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[i : i + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=False,
        )
        out.append(pooled_hidden(model, enc["input_ids"].to(device), enc["attention_mask"].to(device)).cpu())
    hidden = getattr(getattr(model, "config", None), "hidden_size", 0)
    return torch.cat(out) if out else torch.zeros(0, hidden)


# ------------------------------------------------------------------------------------- training


def train_router(
    features: torch.Tensor,
    labels: torch.Tensor,
    domains: Sequence[str],
    backbone_fingerprint: str,
    *,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> Router:
    """Fit the head on (N, H) `features` with `labels` (N,) indexing `domains`.

    Full-batch Adam on the mean cross-entropy + weight_decay * ||W||^2 / 2 (the bias is not
    penalised), from zero weights, in float32: deterministic for given features.

    Raises:
        ValueError: no features, mismatched lengths, a label outside the domains, a domain with no
            example (a router cannot learn a class it never saw), steps < 1, lr <= 0 or weight_decay < 0.
    """
    if steps < 1 or not lr > 0 or not weight_decay >= 0:
        raise ValueError(f"train_router needs steps >= 1, lr > 0, weight_decay >= 0; got {steps}, {lr}, {weight_decay}")
    k = len(domains)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if features.ndim != 2 or len(features) == 0 or len(features) != len(labels):
        raise ValueError(f"train_router needs (N, H) features and N labels, got {tuple(features.shape)} and {len(labels)}")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must index the {k} domains {list(domains)}")
    counts = torch.bincount(labels, minlength=k)
    if (counts == 0).any():
        empty = [d for d, c in zip(domains, counts.tolist()) if c == 0]
        raise ValueError(f"no training prompts for domain(s) {empty}: the router cannot learn them")
    x = features.float()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp(min=1e-6)
    z = (x - mean) / std
    torch.manual_seed(seed)  # nothing random today; kept so a future random init stays reproducible
    weight = torch.zeros(k, x.shape[1], requires_grad=True)
    bias = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(z @ weight.T + bias, labels) + 0.5 * weight_decay * weight.pow(2).sum()
            loss.backward()
            opt.step()
    loss = loss.detach()
    router = Router(list(domains), backbone_fingerprint, weight.detach(), bias.detach(), mean, std)
    router.meta = {
        "steps": steps,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "final_loss": round(loss.item(), 6),
        "counts": dict(zip(domains, counts.tolist())),
    }
    return router


def accuracy(router: Router, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose top-1 domain is their label."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if len(labels) == 0:
        return float("nan")
    return float((router.predict(features).cpu() == labels).float().mean())


def confusion_matrix(labels: Sequence[int] | torch.Tensor, predicted: Sequence[int] | torch.Tensor, k: int) -> list[list[int]]:
    """K x K counts: row = true domain, column = routed domain.

    >>> confusion_matrix([0, 0, 1], [0, 1, 1], 2)
    [[1, 1], [0, 1]]
    """
    m = [[0] * k for _ in range(k)]
    for t, p in zip(torch.as_tensor(labels).tolist(), torch.as_tensor(predicted).tolist()):
        m[t][p] += 1
    return m


# ------------------------------------------------------------------------------------- the file


def save_router(router: Router, path: str | os.PathLike) -> None:
    """One safetensors file: the head and standardisation as tensors, the rest in the JSON header.

    Written to a temp file in the same directory and renamed.
    """
    path = Path(path)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "domains": list(router.domains),
        "backbone_fingerprint": router.backbone_fingerprint,
        "pooling": router.pooling,
        "meta": router.meta,
    }
    tensors = {name: getattr(router, name).detach().float().cpu().contiguous() for name in _TENSORS}
    with tmp_path_for(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header)})


def load_router(path: str | os.PathLike, expected_fingerprint: str | None = None) -> Router:
    """Read a router written by `save_router`.

    Args:
        expected_fingerprint: when given, the backbone the router's features must come from.

    Raises:
        RouterError: the file is missing or corrupt, is not a router of this format, its tensors
            disagree with its domains, or it was trained on another backbone's features.
    """
    path = Path(path)
    redo = f"delete {path.parent} and re-run the route stage (python -m skillweave stage=route ...)"  # else it is "complete"
    if not path.is_file():
        raise RouterError(f"router {path} does not exist; {redo}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(HEADER_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise RouterError(f"truncated or corrupt safetensors file {path} ({e}); {redo}") from None
    if raw is None:
        raise RouterError(f"{path} is a safetensors file but not a router (no {HEADER_KEY!r} header)")
    try:
        header = json.loads(raw)
        if header["format"] != FORMAT or header["format_version"] != FORMAT_VERSION:
            raise RouterError(
                f"router {path} is {header['format']} version {header['format_version']}; this skillweave "
                f"reads {FORMAT} version {FORMAT_VERSION}: {redo}"
            )
        router = Router(
            domains=list(header["domains"]),
            backbone_fingerprint=header["backbone_fingerprint"],
            pooling=header["pooling"],
            meta=header["meta"],
            **{name: tensors[name] for name in _TENSORS},
        )
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RouterError(f"router {path} has a corrupt header or lacks a tensor ({e!r}); {redo}") from None
    k, h = router.weight.shape
    if k != len(router.domains) or router.bias.shape != (k,) or router.mean.shape != (h,) or router.std.shape != (h,):
        raise RouterError(f"router {path}: tensors do not fit {len(router.domains)} domains; {redo}")
    if router.pooling != POOLING:
        raise RouterError(f"router {path} pools {router.pooling!r}; this skillweave computes {POOLING!r}")
    if expected_fingerprint is not None and router.backbone_fingerprint != expected_fingerprint:
        raise RouterError(
            f"router {path} was trained on the features of backbone {router.backbone_fingerprint}, this model "
            f"is {expected_fingerprint}: its routing would be meaningless; train one for this backbone ({redo})"
        )
    return router


# ---------------------------------------------------------------------------------- Twin-Merging


@dataclass
class ExclusiveFactors:
    """One linear layer's exclusive knowledge of every domain: R_k ~ a[k] @ b[k], stored in fp16."""

    a: torch.Tensor
    """fp16 (K, out, r) = U_r S_r^(1/2) per domain."""
    b: torch.Tensor
    """fp16 (K, r, in) = S_r^(1/2) V_r^T per domain."""

    def reconstruct(self, k: int) -> torch.Tensor:
        """float32 (out, in): domain k's low-rank exclusive delta as the hooks apply it."""
        return self.a[k].float() @ self.b[k].float()


def stack_exclusive(per_domain: Sequence[Mapping[str, tuple[torch.Tensor, torch.Tensor]]]) -> dict[str, ExclusiveFactors]:
    """Each domain's factors (A, B) of every linear, in router order, stacked for `TwinMerging`.

    Args:
        per_domain: linear module name -> (A, B) per domain, e.g. the `twin` compressor's `factors()`;
            one rank for every domain, so that they stack.

    Raises:
        ValueError: no domain, or domains whose factors cover other linears.
    """
    if not per_domain:
        raise ValueError("Twin-Merging needs at least one domain's exclusive factors")
    names = sorted(per_domain[0])
    if any(sorted(f) != names for f in per_domain):
        raise ValueError("the domains' exclusive factors cover different linears")
    return {
        name: ExclusiveFactors(a=torch.stack([f[name][0] for f in per_domain]), b=torch.stack([f[name][1] for f in per_domain]))
        for name in names
    }


class TwinMerging:
    """Router-weighted low-rank exclusive deltas added to a model's block linears by forward hooks.

    `attach(model)` hooks every linear in `factors`; each output row b gets
    sum_k weights[b, k] * (x B_k^T) A_k^T. With a router, a forward pre-hook on the model sets
    `weights` from the backbone's pooled hidden states of the input at each prefill (a forward with no
    cached tokens; the deltas are off while it reads them) and keeps them for the decode steps; every
    prefill's weights are appended to `history`. Without a router, set `weights` yourself ((K,) or
    (B, K)). `detach()` removes the hooks: the model's parameters are never touched.
    """

    def __init__(self, domains: Sequence[str], factors: dict[str, ExclusiveFactors], router: Router | None = None) -> None:
        if router is not None and list(router.domains) != list(domains):
            raise ValueError(f"the router's domains {router.domains} are not the experts' {list(domains)}")
        self.domains = list(domains)
        self.factors = factors
        self.router = router
        self.weights: torch.Tensor | None = None
        self.history: list[torch.Tensor] = []
        self._handles: list = []
        self._enabled = True
        self._runtime: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def attach(self, model: nn.Module) -> None:
        """Hook `model`'s linears (and, with a router, its forward) in place.

        Raises:
            ValueError: already attached, or a layer is missing or has another shape.
        """
        if self._handles:
            raise ValueError("TwinMerging is already attached; detach() first")
        modules = {}
        for name, f in self.factors.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"the model has no layer {name}") from None
            shape = (f.a.shape[1], f.b.shape[2])
            if not isinstance(module, nn.Linear) or tuple(module.weight.shape) != shape:
                raise ValueError(f"{name} is not an nn.Linear of shape {shape}")
            modules[name] = module
        for name, module in modules.items():
            f, w = self.factors[name], module.weight
            k, out_features, r = f.a.shape
            # Stacked once: x -> (x B_all^T) (K*r) -> scaled per row and domain -> A_all (out x K*r).
            b_all = f.b.reshape(k * r, -1).to(w.device, w.dtype)
            a_all = f.a.permute(1, 0, 2).reshape(out_features, k * r).to(w.device, w.dtype)
            self._runtime[name] = (a_all, b_all, r)
            self._handles.append(module.register_forward_hook(self._hook(name)))
        if self.router is not None:
            self._handles.append(model.register_forward_pre_hook(self._route, with_kwargs=True))

    def detach(self) -> None:
        """Remove every hook; the model computes exactly what it did before `attach`."""
        for h in self._handles:
            h.remove()
        self._handles, self._runtime = [], {}

    def _hook(self, name: str):
        def hook(module, args, output):
            if not self._enabled:
                return None
            if self.weights is None:
                raise RuntimeError("TwinMerging has no routing weights: attach a router or set .weights")
            a_all, b_all, r = self._runtime[name]
            x = args[0]
            w = self.weights.to(x.device, x.dtype)
            w = w.expand(x.shape[0], -1) if w.ndim == 1 else w
            if w.shape[0] != x.shape[0]:
                raise RuntimeError(f"routing weights for {w.shape[0]} rows, the batch has {x.shape[0]}")
            h = nn.functional.linear(x, b_all)  # (B, ..., K*r)
            scale = w.repeat_interleave(r, dim=-1).reshape(x.shape[0], *([1] * (x.ndim - 2)), -1)
            return output + nn.functional.linear(h * scale, a_all)

        return hook

    def _route(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if cache is not None and cache.get_seq_length() > 0:
            return None  # a decode step: keep the weights of this batch's prompt
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise RuntimeError("TwinMerging routes on input_ids; this forward got none")
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        elif not (isinstance(mask, torch.Tensor) and mask.ndim == 2):
            raise RuntimeError("TwinMerging routes with a 2-D attention mask (a dynamic cache), got another form")
        self._enabled = False  # the router reads the shared backbone's features, as it was trained
        try:
            features = pooled_hidden(module, input_ids, mask)
        finally:
            self._enabled = True
        self.weights = self.router.probs(features)
        self.history.append(self.weights.detach().cpu())
        return None
