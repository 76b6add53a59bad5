"""The shared delta (mergekit on the task vectors, zero base) and the merged backbone as an HF directory."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import MergeConfig
from .core.errors import ArtifactError, ConfigError
from .models import load_model, load_tokenizer, model_fingerprint


METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")


def check_method(cfg: MergeConfig) -> None:
    """Raises ConfigError for a merge.method this module does not run (checked when the merge is planned)."""
    if cfg.method not in METHODS:
        import difflib

        close = difflib.get_close_matches(cfg.method, METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"merge.method={cfg.method}: not supported.{hint} Valid: {', '.join(METHODS)}")


def shared_delta(deltas: dict[str, dict[str, torch.Tensor]], cfg: MergeConfig) -> dict[str, torch.Tensor]:
    """mergekit's merge of the task vectors `deltas` (domain -> delta), relative to a zero base."""
    from mergekit.merge_methods import merge_state_dicts

    check_method(cfg)
    params = {"weight": cfg.weight, "lambda": cfg.lambda_}
    if cfg.method != "task_arithmetic":
        params |= {"density": cfg.density}
    if cfg.method in ("ties", "dare_ties", "task_arithmetic"):
        params |= {"normalize": cfg.normalize}
    first = next(iter(deltas.values()))
    zero = {k: torch.zeros_like(v) for k, v in first.items()}
    torch.manual_seed(cfg.seed)  # DARE's random drop
    with torch.no_grad():
        merged = merge_state_dicts({"__base__": zero, **deltas}, cfg.method, parameters=params, base="__base__")
    return {k: v.float().contiguous() for k, v in merged.items()}


def save_backbone(template_dir: Path, state_dict: dict[str, torch.Tensor], out: Path) -> str:
    """A HF model directory with `state_dict` as weights (config and tokenizer from `template_dir`)."""
    import shutil

    model = load_model(template_dir)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or any(not k.startswith("lm_head") for k in missing):
        raise ArtifactError(f"backbone weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    load_tokenizer(template_dir).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    fp = model_fingerprint(out)
    return fp
