"""`python -m skillweave stage=<stage> domain=<domain> [overrides]`: the Hydra entry point.

With no arguments it runs the whole pipeline (stage=all) on the embedded model with the
`quickstart` recipe. A `SkillweaveError` (a bad setting, a missing input artifact, a damaged file)
ends with one line that names the fix; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import register_configs, to_config
from .core.compose import CONF_DIR, composer, domain_overrides, replayable
from .core.errors import SkillweaveError

log = logging.getLogger("skillweave")


@hydra.main(version_base=None, config_path=CONF_DIR, config_name="config")
def _hydra_main(dcfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .app import run

    given = HydraConfig.get().overrides
    # Replayed for every domain the run composes: the user's overrides, and the search path that may hold
    # a domain's YAML (Hydra files it among its own overrides).
    searchpath = [o for o in given.hydra if o.startswith("hydra.searchpath=")]
    overrides = replayable([*given.task, *searchpath])
    try:
        compose = composer()
        cfg = to_config(dcfg)
        if domain_overrides(cfg):  # this domain's own settings go under the command line's
            cfg = compose([*given.task, *searchpath])
        run(cfg, overrides, compose)
    except SkillweaveError as e:
        if os.environ.get("SKILLWEAVE_DEBUG"):
            raise
        log.error("%s", e)
        print(f"skillweave: error: {e}", file=sys.stderr)
        sys.exit(1)


def _registered(kind: str) -> str:
    """The names in a plugin registry, for `--help` (plugins load only when the help is rendered)."""
    from .app import load_plugins
    from .core.configurations import CONFIGURATIONS
    from .core.engine import STAGES

    load_plugins()
    return ", ".join((STAGES if kind == "stages" else CONFIGURATIONS).names())


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub at run time
    register_configs()
    for kind in ("stages", "configurations"):
        OmegaConf.register_new_resolver(f"skillweave_{kind}", lambda kind=kind: _registered(kind), replace=True)
    _hydra_main()


if __name__ == "__main__":
    main()
