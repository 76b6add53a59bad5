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
    """What the Trainer's W&B callback reads from the environment ({} when disabled); set it for the
    training only (`scoped_env`), so a later job of an in-process sweep is not logged by mistake."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return {}
    root = Path(_wandb_dir(cfg))
    env = {"WANDB_MODE": mode, "WANDB_PROJECT": cfg.wandb.project, "WANDB_DIR": str(root)}
    env |= _side_dirs(root)
    group = wandb_group(cfg)
    return env | ({"WANDB_RUN_GROUP": group} if group else {})


_SIDE_DIRS = {"WANDB_CACHE_DIR": "cache", "WANDB_CONFIG_DIR": "config", "WANDB_DATA_DIR": "data"}
"""W&B's own directories, beside the runs unless set: nothing lands in ~/.cache or ~/.config
(read-only or quota-limited on many clusters)."""


def _side_dirs(root: Path) -> dict[str, str]:
    dirs = {k: os.environ.get(k) or str(root / sub) for k, sub in _SIDE_DIRS.items()}
    for path in dirs.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    return dirs


@contextmanager
def scoped_env(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block only; what was there before is put back."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wandb_dir(cfg: SkillweaveConfig) -> str:
    path = Path(os.environ.get("WANDB_DIR") or Path(cfg.artifacts_root) / "wandb").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


@contextmanager
def wandb_run(cfg: SkillweaveConfig, job_type: str, name: str, config: dict[str, Any]) -> Iterator[Any]:
    """A W&B run for one stage's results, or None when W&B is disabled."""
    mode = wandb_mode(cfg)
    if mode == "disabled":
        yield None
        return
    import wandb

    root = Path(_wandb_dir(cfg))
    with scoped_env(_side_dirs(root)):
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
            close_wandb()


def close_wandb() -> None:
    """Finish the open W&B run, if any, and drop wandb's process-wide state.

    wandb reads its settings (mode, directories) from the environment once per process; without this
    a later run in the same process (the Trainer's callback in stage=dev or stage=all, the next job of
    an in-process -m sweep) keeps the first run's settings and, for example, asks for an API key
    although WANDB_MODE=offline is set for it.
    """
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()
