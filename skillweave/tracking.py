"""W&B logging: offline by default, online when asked, grouped so a sweep's runs sit side by side.

The mode is `wandb.mode` unless the environment sets WANDB_MODE (the Makefile's test target sets
`disabled`; a cluster job may set `online`). Offline runs land under `<artifacts_root>/wandb`
(or WANDB_DIR) and are uploaded later with `wandb sync` (slurm/README.md).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from .config import SkillweaveConfig

MODES = ("disabled", "offline", "online")


def wandb_mode(cfg: SkillweaveConfig) -> str:
    """The W&B mode in effect: WANDB_MODE from the environment, else `wandb.mode`."""
    mode = os.environ.get("WANDB_MODE") or cfg.wandb.mode
    if mode not in MODES:
        raise ValueError(f"W&B mode {mode!r} (wandb.mode or WANDB_MODE) is not one of {', '.join(MODES)}")
    return mode


def wandb_group(cfg: SkillweaveConfig) -> Optional[str]:
    """`wandb.group`, else the Hydra sweep's directory name under -m (every job of one sweep shares it)."""
    if cfg.wandb.group:
        return cfg.wandb.group
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return "sweep-" + Path(hc.sweep.dir).as_posix().strip("/").replace("/", "_")
    except ValueError:  # not under @hydra.main (tests, the Python API)
        pass
    return None


def wandb_env(cfg: SkillweaveConfig) -> dict[str, str]:
    """What the Trainer's W&B callback reads from the environment ({} when disabled)."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return {}
    env = {"WANDB_MODE": mode, "WANDB_PROJECT": cfg.wandb.project, "WANDB_DIR": _wandb_dir(cfg)}
    group = wandb_group(cfg)
    return env | ({"WANDB_RUN_GROUP": group} if group else {})


def _wandb_dir(cfg: SkillweaveConfig) -> str:
    path = Path(os.environ.get("WANDB_DIR") or Path(cfg.artifacts_root) / "wandb").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


@contextmanager
def _default_env(values: dict[str, Path]) -> Iterator[None]:
    """Set the variables not already set, for the duration of the block only."""
    added = [k for k in values if not os.environ.get(k)]
    for k in added:
        values[k].mkdir(parents=True, exist_ok=True)
        os.environ[k] = str(values[k])
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextmanager
def wandb_run(cfg: SkillweaveConfig, job_type: str, name: str, config: dict[str, Any]) -> Iterator[Any]:
    """A W&B run for one stage's results, or None when W&B is disabled.

    W&B's cache, config and data directories default to folders beside the runs when unset, so
    nothing is written to ~/.cache or ~/.config (read-only or quota-limited on many clusters).
    """
    mode = wandb_mode(cfg)
    if mode == "disabled":
        yield None
        return
    import wandb

    root = Path(_wandb_dir(cfg))
    dirs = {"WANDB_CACHE_DIR": root / "cache", "WANDB_CONFIG_DIR": root / "config", "WANDB_DATA_DIR": root / "data"}
    with _default_env(dirs):
        run = wandb.init(
            project=cfg.wandb.project,
            group=wandb_group(cfg),
            job_type=job_type,
            name=name,
            config=config,
            dir=str(root),
            mode=mode,
            reinit="create_new",
        )
        try:
            yield run
        finally:
            run.finish()
