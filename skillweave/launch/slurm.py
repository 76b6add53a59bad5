"""`stage=all` on a cluster: each domain's local stages as one job array, the fan-in stages after it.

`skillweave-cluster hydra/launcher=slurm [overrides]` (or `python -m skillweave.launch.slurm`) plans
the whole run at submission, so a typo fails before any job is queued, then submits through
submitit with the resources of `hydra/launcher` (conf/hydra/launcher/).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from ..app import context
from ..core.compose import CONF_DIR, composer, replayable
from ..core.flow import plan_all, run_domain, run_fan_in


def run_job(overrides: list[str], domain: Optional[str]) -> dict[str, str]:
    """One job's work, composed as `python -m skillweave` would: a domain's local stages (generate ->
    filter -> dpo, every online-DPO round), or with domain=None the fan-in stages (core.flow.run_fan_in).

    `overrides` carry no stage=/domain= (submit_all drops them). Returns {"stage/domain": artifact
    path}; a missing input raises MissingArtifactError naming the domain and the command that makes it.
    """
    from hydra import initialize_config_dir

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        compose = composer()
        ctx = context(compose(overrides), tuple(overrides), compose)
        done = run_domain(ctx, domain) if domain else run_fan_in(ctx)
        return {name: str(ref.path) for name, ref in done.items()}


def submit_all(overrides: list[str], cluster: Optional[str] = None) -> tuple[list, object]:
    """Submit stage=all through submitit with the resources of `hydra/launcher` (conf/hydra/launcher/).

    generate -> filter -> dpo of each domain in `domains` (every online-DPO round) run as one job array;
    the fan-in stages (merge, zip of every domain, the eval configurations' other inputs, eval) run as one
    job after it. On Slurm that job carries `--dependency=afterok:<array>`
    (and is cancelled if a domain fails) and this returns at once; the local and debug executors have
    no dependencies, so this waits for the array before submitting the fan-in job.

    Args:
        overrides: the run's overrides, as for `python -m skillweave` (stage= and domain= are ignored).
        cluster: `slurm`, `local` or `debug` (in this process); default: from hydra/launcher.
    Returns:
        (the array's jobs, the fan-in job).
    """
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf

    overrides = list(replayable(overrides))
    setup_globals()  # the ${now:} resolver of hydra.sweep.dir
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        typed = composer()
        full = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        ctx = context(typed(overrides), tuple(overrides), typed)
        plan_all(ctx)  # every typo fails here, before a job is queued
        cfg = ctx.cfg
    # Jobs may start in another directory: pin the store (not part of any key) to an absolute path.
    overrides = [o for o in overrides if not o.startswith("artifacts_root=")]
    overrides.append(f"artifacts_root={Path(cfg.artifacts_root).resolve()}")
    domains = cfg.domains
    launcher = OmegaConf.to_container(full.hydra.launcher, resolve=True)
    target = launcher.pop("_target_")
    cluster = cluster or ("slurm" if target.endswith("SlurmLauncher") else "local")
    executor = submitit.AutoExecutor(
        folder=launcher.pop("submitit_folder"), cluster=cluster, slurm_max_num_timeout=launcher.pop("max_num_timeout", 0)
    )
    # The launcher plugin's own mapping: shared fields bare, Slurm-only ones `slurm_`-prefixed (which
    # the other executors ignore).
    shared = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "stderr_to_stdout"}
    executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in launcher.items() if k != "name"})
    executor.update_parameters(name="skillweave-domains")
    array = executor.map_array(run_job, [overrides] * len(domains), list(domains))
    if cluster == "slurm":
        extra = {**launcher.get("additional_parameters", {}), "kill-on-invalid-dep": "yes"}
        extra["dependency"] = "afterok:" + array[0].job_id.split("_")[0]
        executor.update_parameters(slurm_additional_parameters=extra)
    else:
        for job in array:
            job.result()  # raises the domain's error, naming the command to rerun it
    executor.update_parameters(name="skillweave-fan-in")
    fan_in = executor.submit(run_job, overrides, None)
    return array, fan_in


def main() -> None:
    """`skillweave-cluster hydra/launcher=slurm [overrides]`: submit stage=all and print the jobs."""
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    array, fan_in = submit_all(sys.argv[1:])
    print(f"per-domain array: {' '.join(j.job_id for j in array)}; fan-in (merge, zip, eval): {fan_in.job_id}")
    print(f"logs: {fan_in.paths.folder.parent}")


if __name__ == "__main__":
    main()
