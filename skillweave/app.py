"""The top layer shared by the CLI (`__main__`) and the Slurm launcher: load the plugins, check the
config against their registries, and run what it asks for.

Plugins are found by walking their packages, so a new stage, eval configuration or method is a new
file and no existing file names it.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import cache
from pathlib import Path
from typing import Optional

from .config import SkillweaveConfig
from .core.artifacts import ArtifactRef
from .core.compose import Composer, choose, validate
from .core.distributed import check_launch, leave_process_group
from .core.engine import STAGES, Context
from .core.errors import ConfigError
from .core.flow import plan_report, run_all, run_stage
from .resources import import_folder
from .skill import check_skills, load_skill_dir

PLUGIN_PACKAGES = ("skillweave.stages", "skillweave.compressors", "skillweave.eval_configs", "skillweave.domains", "skillweave.skills")
"""Every module of these packages is imported once, in this order: importing registers its plugins (the
eval configurations read the registered compressors)."""


@cache
def load_plugins() -> None:
    for package in PLUGIN_PACKAGES:
        pkg = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package}.{info.name}")
    check_skills()  # a composed skill's checks may be rules another skill registers: bound once all are loaded


def load_domain_dir(path: str) -> None:
    """Import a domain folder outside the package (`domain_dirs`) as the package `skillweave_domain_<name>`.

    Raises:
        ConfigError: not a folder with an __init__.py.
    """
    folder = Path(path).expanduser().resolve()
    if not (folder / "__init__.py").is_file():
        raise ConfigError(f"domain_dirs: {path} is not a domain folder (a folder with an __init__.py that registers it)")
    import_folder(folder, f"skillweave_domain_{folder.name}")


def check_writable(root: Path) -> None:
    """Raises ConfigError when artifacts_root cannot hold artifacts (not a directory, read-only)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"artifacts_root={root}: cannot write there ({e.strerror}): choose a writable directory") from None


def context(cfg: SkillweaveConfig, overrides: tuple[str, ...], composer: Optional[Composer]) -> Context:
    """The run's context, after the config passed every registry check and every domain composed."""
    from hydra.errors import MissingConfigException

    load_plugins()
    for path in cfg.domain_dirs:
        load_domain_dir(path)
    for path in cfg.skill_dirs:
        load_skill_dir(path)
    validate(cfg)
    check_writable(Path(cfg.artifacts_root))
    ctx = Context(cfg=cfg, overrides=overrides, composer=composer)
    if composer is not None:
        for d in cfg.domains:
            try:
                ctx.for_domain(d)
            except MissingConfigException as e:
                choose(d, e.options or [], "domain (conf/domain/ and hydra.searchpath)", "domains")
                raise
    return ctx


def run(cfg: SkillweaveConfig, overrides: tuple[str, ...], composer: Composer) -> dict[str, ArtifactRef]:
    """Run the configured stage (or all of them) and return the artifacts it produced or reused."""
    import torch

    ctx = context(cfg, overrides, composer)
    if cfg.dry_run:
        print(plan_report(ctx))
        return {}
    check_launch(cfg.stage, [s for s in STAGES if STAGES.get(s).distributed])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        if cfg.stage == "all":
            return run_all(ctx)
        return run_stage(ctx, cfg.stage, cfg.domain.name)
    finally:
        leave_process_group()
