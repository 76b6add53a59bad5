"""Running one stage on several processes (accelerate launch, torchrun, srun): who does what.

Every rank of a multi-process launch runs the same `python -m skillweave stage=dpo ...`. Training is
collective, but the artifact bookkeeping is not: rank 0 alone takes the artifact lock and writes
config.json, the delta and the manifest. If every rank took the (exclusive) lock, rank 0 would hold
it and wait in training for ranks that wait on the lock: a deadlock. So the other ranks skip the
lock and follow rank 0's decisions (`main_process_decides`), and all ranks take the same branch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, TypeVar

T = TypeVar("T")
DISTRIBUTED_STAGES = ("generate", "dpo", "dpo_multitask", "lora")
"""Stages that run as one multi-process job; the others are single-process (a job array scales them)."""


def process_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) for a plain `python -m skillweave`."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_rank()[0] == 0


def check_launch(stage: str) -> None:
    """Refuse a multi-process launch of a stage that would only repeat the same work on every rank.

    Raises:
        ValueError: WORLD_SIZE > 1 for a stage other than those in DISTRIBUTED_STAGES.
    """
    world = process_rank()[1]
    if world > 1 and stage not in DISTRIBUTED_STAGES:
        raise ValueError(
            f"stage={stage} was launched on {world} processes, but only {', '.join(DISTRIBUTED_STAGES)} runs on "
            "several; run the other stages with plain `python -m skillweave` (a Slurm job array spreads domains)"
        )


def main_process_decides(value: T) -> T:
    """Rank 0's `value`, on every rank: file checks can differ between ranks while another job writes.

    Initialises the default process group (NCCL on GPUs, gloo on CPU) from the launcher's
    environment if nothing has yet; accelerate, DeepSpeed and the Trainer reuse it.
    """
    if process_rank()[1] == 1:
        return value
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def leave_process_group() -> None:
    """Destroy the default process group, if one was made, before the interpreter exits.

    A gloo group left to interpreter shutdown aborts the process now and then ("terminate called
    without an active exception", about 1 run in 6 of two ranks here), failing a launch that did its
    work. No barrier: on an error path the ranks may not all get here.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- stage=all on a cluster: the per-domain stages as one job array, the fan-in stages after it ---

def run_job(overrides: list[str], domain: Optional[str]) -> dict[str, str]:
    """One job's work, composed as `python -m skillweave` would: a domain's generate -> filter -> dpo
    (every online-DPO round), or with domain=None the fan-in stages (pipeline.run_fan_in).

    `overrides` carry no stage=/domain= (submit_all drops them). Returns {"stage/domain": artifact
    path}; a missing input raises MissingArtifactError naming the domain and the command that makes it.
    """
    from hydra import compose, initialize_config_dir

    from . import stages  # noqa: F401  (registers the stages)
    from .__main__ import CONF_DIR
    from .config import register_configs, to_config
    from .pipeline import Context, run_fan_in, run_rounds

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        composer = lambda extra: to_config(compose(config_name="config", overrides=extra))  # noqa: E731
        ctx = Context(cfg=composer(overrides), overrides=tuple(overrides), composer=composer)
        done = run_rounds(ctx, domain) if domain else run_fan_in(ctx)
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

    from .__main__ import CONF_DIR, replayable
    from .config import register_configs, to_config

    overrides = list(replayable(overrides))
    register_configs()
    setup_globals()  # the ${now:} resolver of hydra.sweep.dir
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        full = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        cfg = to_config(compose(config_name="config", overrides=overrides))
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
    """`python -m skillweave.cluster hydra/launcher=slurm [overrides]`: submit stage=all and print the jobs."""
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    array, fan_in = submit_all(sys.argv[1:])
    print(f"per-domain array: {' '.join(j.job_id for j in array)}; fan-in (merge, zip, eval): {fan_in.job_id}")
    print(f"logs: {fan_in.paths.folder.parent}")


if __name__ == "__main__":
    main()
