"""`python -m skillweave stage=<stage> domain=<domain> [overrides]`: the Hydra entry point.

With no arguments it runs the whole pipeline (stage=all) on the embedded model with the
`quickstart` recipe. Known user errors (a missing input artifact, a bad model path, a malformed
rule set or skillpack) end with one line; set SKILLWEAVE_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import hydra
from omegaconf import DictConfig

from .config import SkillweaveConfig, register_configs, to_config
from .resources import resource_path

log = logging.getLogger("skillweave")
CONF_DIR = str(resource_path("conf"))
_RESERVED = ("stage", "domain")  # chosen per job when stage=all fans out over domains


def domain_choices() -> list[str]:
    return sorted(p.stem for p in resource_path("conf", "domain").glob("*.yaml"))


def replayable(overrides: list[str]) -> tuple[str, ...]:
    """The user's overrides without `stage=`/`domain=`, to compose the same run for another domain."""
    return tuple(o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in _RESERVED)


def run(cfg: SkillweaveConfig, overrides: tuple[str, ...], composer: Callable[[list[str]], SkillweaveConfig]) -> dict:
    """Run the configured stage (or all of them) and return the artifacts it produced or reused."""
    import torch

    from . import stages  # noqa: F401  (registers the stages)
    from .cluster import check_launch, leave_process_group
    from .pipeline import Context, run_all, run_stage

    check_launch(str(cfg.stage.name))

    unknown = [d for d in cfg.domains if d not in domain_choices()]
    if unknown:
        raise ValueError(f"domains={unknown} not found in conf/domain/; valid: {', '.join(domain_choices())}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = Context(cfg=cfg, overrides=overrides, composer=composer)
    try:
        if cfg.stage.name == "all":
            return run_all(ctx)
        return run_stage(ctx, str(cfg.stage.name), cfg.domain.name)  # stage=dpo runs every dpo.rounds
    finally:
        leave_process_group()


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def _hydra_main(dcfg: DictConfig) -> None:
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from .artifacts import MissingArtifactError
    from .models import ModelError

    overrides = replayable(list(HydraConfig.get().overrides.task))
    try:
        cfg = to_config(dcfg)
        run(cfg, overrides, lambda extra: to_config(compose(config_name="config", overrides=extra)))
    except (MissingArtifactError, ModelError, ValueError, KeyError, FileNotFoundError) as e:
        if os.environ.get("SKILLWEAVE_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        log.error("%s", msg)
        print(f"skillweave: error: {msg}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
