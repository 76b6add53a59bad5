"""The top layer shared by the CLI (`__main__`) and the Slurm launcher: load the plugins, check the
config against their registries, and run what it asks for.

Plugins are found by walking their packages, so a new stage, eval configuration or method is a new
file and no existing file names it.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Optional

from .config import SkillweaveConfig
from .core.artifacts import ArtifactRef
from .core.compose import Composer, validate
from .core.distributed import check_launch, leave_process_group
from .core.engine import STAGES, Context
from .core.flow import run_all, run_stage

PLUGIN_PACKAGES = ("skillweave.stages", "skillweave.eval_configs", "skillweave.compressors")
"""Every module of these packages is imported once: importing registers its plugins."""


@cache
def load_plugins() -> None:
    for package in PLUGIN_PACKAGES:
        pkg = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package}.{info.name}")


def context(cfg: SkillweaveConfig, overrides: tuple[str, ...], composer: Optional[Composer]) -> Context:
    """The run's context, after the config passed every registry check."""
    load_plugins()
    validate(cfg)
    return Context(cfg=cfg, overrides=overrides, composer=composer)


def run(cfg: SkillweaveConfig, overrides: tuple[str, ...], composer: Composer) -> dict[str, ArtifactRef]:
    """Run the configured stage (or all of them) and return the artifacts it produced or reused."""
    import torch

    ctx = context(cfg, overrides, composer)
    check_launch(cfg.stage, [s for s in STAGES if STAGES.get(s).distributed])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        if cfg.stage == "all":
            return run_all(ctx)
        return run_stage(ctx, cfg.stage, cfg.domain.name)
    finally:
        leave_process_group()
