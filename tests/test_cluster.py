"""Scale-out paths on one CPU machine: a submitit sweep, the Slurm launcher config, several ranks
training one delta, DeepSpeed ZeRO-2 on one process, and the sbatch template's guards."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose
from test_pipeline import overrides, run_overrides

from compose import hydra_context
from skillweave.core.distributed import check_launch, leave_process_group
from skillweave.core.engine import STAGES
from skillweave.launch.slurm import submit_all
from skillweave.config import DPOConfig
from skillweave.models import load_state_dict
from skillweave.resources import resource_path
from skillweave.deltas import load_delta
from skillweave.training import deepspeed_config

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "slurm" / "dpo_multinode.sbatch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """A command as a user types it, offline, one thread per process (2 shared cores here)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": "/tmp/skillweave-torch-extensions",  # the comm op compiles once
        **env,
    }
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def manifests(root: Path, stage: str) -> dict[str, dict]:
    return {p.parent.name.split("-")[0]: json.loads(p.read_text()) for p in (root / stage).glob("*/manifest.json")}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tiny_model_dir):
    """Filtered pairs for math on the tiny model, and the overrides that name them."""
    tmp = tmp_path_factory.mktemp("cluster")
    for stage in ("generate", "filter"):
        run_overrides(overrides(tmp, tiny_model_dir, f"stage={stage}", "domain=math"))
    return tmp, overrides(tmp, tiny_model_dir, "stage=dpo", "domain=math", "threads=1")


def fresh_root(pairs, tmp_path) -> list[str]:
    """The pairs' overrides pointed at a copy of their artifact store, so each test trains its own delta."""
    src, ov = pairs
    shutil.copytree(src / "artifacts", tmp_path / "artifacts")
    return [o if not o.startswith("artifacts_root=") else f"artifacts_root={tmp_path / 'artifacts'}" for o in ov]


def test_sweep_runs_one_job_per_domain_through_submitit(tmp_path, tiny_model_dir):
    # The Slurm command with the local executor: same pickled jobs and logs, no scheduler.
    proc = launch(
        [sys.executable, "-m", "skillweave", "-m", "stage=generate", "domain=math,code", "recipe=tiny",
         "model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={tmp_path / 'artifacts'}",
         "threads=1", "hydra/launcher=local", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path,
    )
    done = manifests(tmp_path / "artifacts", "generate")
    assert set(done) == {"math", "code"}
    # 4 samples per prompt kept after the contamination check (math may lose one of its 4 prompts)
    assert all(m["metrics"]["samples"] == 4 * m["metrics"]["prompts"] > 0 for m in done.values())
    jobs = [p for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2 and all(list(j.glob("*_result.pkl")) for j in jobs)
    for num, domain in enumerate(("math", "code")):  # each job's Hydra dir records its own overrides
        assert f"domain={domain}" in (tmp_path / "sweep" / str(num) / ".hydra" / "overrides.yaml").read_text()
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr


def test_slurm_launcher_config_renders_the_sbatch_script(tmp_path, monkeypatch):
    # submitit refuses to build a Slurm executor without `srun` on PATH: a stand-in is enough to render.
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    with hydra_context():
        cfg = compose(
            config_name="config",
            overrides=["stage=dpo", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["array_parallelism"] == 8 and launcher["max_num_timeout"] >= 1
    # The plugin's own mapping (submitit_launcher.py launch()): base fields bare, the rest slurm_-prefixed.
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in base else f"slurm_{k}": v for k, v in launcher.items()
              if k not in ("_target_", "submitit_folder", "max_num_timeout")}
    executor = submitit.AutoExecutor(folder=tmp_path / ".submitit" / "%j", cluster="slurm")
    executor.update_parameters(**params)  # rejects any field sbatch does not know
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=240",
                 "#SBATCH --mem=64GB", "#SBATCH --signal=USR2@120", "export HF_HUB_OFFLINE=1"):
        assert line in script, line


def test_two_ranks_train_one_delta_and_rank_zero_writes_it(pairs, tmp_path):
    # Two processes on one artifact: only rank 0 takes the lock, so neither waits forever.
    ov = fresh_root(pairs, tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    launch([*torchrun, "-m", "skillweave", *ov, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    (dpo,) = (tmp_path / "artifacts" / "dpo").iterdir()
    metrics = json.loads((dpo / "manifest.json").read_text())["metrics"]
    assert metrics["processes"] == 2 and metrics["steps"] == 2 and metrics["relative_weight_change"] > 0
    assert sorted(p.name for p in dpo.iterdir() if not p.name.startswith(".")) == ["config.json", "delta.safetensors", "manifest.json"]
    # Launched again, every rank agrees the artifact is complete and returns.
    again = launch([*torchrun, "-m", "skillweave", *ov, f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path)
    assert (again.stdout + again.stderr).count("nothing to do") == 2


def test_the_process_group_is_destroyed_before_exit(tmp_path):
    # Left to interpreter shutdown, a gloo group aborted about 1 two-rank launch in 6 (SIGABRT).
    import torch.distributed as dist

    leave_process_group()  # none made: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    leave_process_group()
    assert not dist.is_initialized()


def test_only_the_stages_declared_distributed_run_on_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed = [s for s in STAGES if STAGES.get(s).distributed]
    assert distributed == ["dpo", "dpo_multitask", "generate", "lora"]
    with pytest.raises(ValueError, match="stage=merge was launched on 2 processes, but only dpo, dpo_multitask, generate, lora"):
        check_launch("merge", distributed)
    check_launch("generate", distributed)
    check_launch("dpo", distributed)


def test_two_ranks_share_generation_and_sample_what_one_process_does(tmp_path, tiny_model_dir):
    # Rank r samples batches r, r+2, ...; per-batch seeds make the union equal to a one-process run.
    ov = ["stage=generate", "domain=math", "recipe=tiny", "model=hf_dir", f"model.path={tiny_model_dir}", "threads=1",
          "domain.sampling.batch_size=1", f"artifacts_root={tmp_path / 'artifacts'}"]
    single = [*ov[:-1], f"artifacts_root={tmp_path / 'single'}"]
    launch([sys.executable, "-m", "skillweave", *single, f"hydra.run.dir={tmp_path / 'run1'}"], cwd=tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    launch([*torchrun, "-m", "skillweave", *ov, f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path)
    (one,) = (tmp_path / "single" / "generate").iterdir()
    (two,) = (tmp_path / "artifacts" / "generate").iterdir()
    assert one.name == two.name  # the number of processes is not part of the artifact's identity
    assert (two / "samples.jsonl").read_text() == (one / "samples.jsonl").read_text()
    assert json.loads((two / "manifest.json").read_text())["metrics"]["processes"] == 2


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_configs(name, stage):
    path = Path(deepspeed_config(DPOConfig(deepspeed=name)))
    ds = json.loads(path.read_text())
    assert path == resource_path("conf", "deepspeed", f"{name}.json").resolve()
    assert ds["zero_optimization"]["stage"] == stage
    assert "optimizer" not in ds  # the Trainer's AdamW: no fused_adam build
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled from dpo.* by the Trainer
    with pytest.raises(ValueError, match=r"dpo.deepspeed=zero9 is neither one of \['zero2', 'zero3'\]"):
        deepspeed_config(DPOConfig(deepspeed="zero9"))


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_on_one_process_gives_the_plain_delta(pairs, tmp_path, zero, tiny_model_dir):
    # The first run compiles DeepSpeed's comm op (1.5-2 min here); later ones take ~20 s.
    plain = fresh_root(pairs, tmp_path / "plain")
    launch([sys.executable, "-m", "skillweave", *plain, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    ds = fresh_root(pairs, tmp_path / zero)
    launch(
        [sys.executable, "-m", "skillweave", *ds, f"dpo.deepspeed={zero}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, timeout=500,
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
    )
    (a,), (b,) = (list((tmp_path / r / "artifacts" / "dpo").iterdir()) for r in ("plain", zero))
    assert a.name == b.name  # dpo.deepspeed is not part of the key: merge finds either
    assert json.loads((b / "manifest.json").read_text())["metrics"]["deepspeed"] == zero
    da, db = load_delta(a / "delta.safetensors"), load_delta(b / "delta.safetensors")
    scale = max(float(t.abs().max()) for t in da.values())
    assert scale > 0
    base = load_state_dict(tiny_model_dir)
    for k in da:  # the fp32 master weights, gathered from the ZeRO checkpoint
        # Delta = theta - theta_0 in fp32: below the rounding of theta itself (a few ulps: the engines
        # sum in another order) the two deltas cannot agree; the tiny model's delta is ~40 ulps.
        ulp = torch.finfo(torch.float32).eps * float(base[k].abs().max())
        assert float((da[k] - db[k]).abs().max()) <= 1e-3 * scale + 4 * ulp, k


def test_sbatch_template_parses():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "SKILLWEAVE_DIR is not set"),  # every required variable is named, the first one missing first
        ({"SKILLWEAVE_DIR": "/x"}, "ARTIFACTS_ROOT is not set"),
        ({"SKILLWEAVE_DIR": "/x", "ARTIFACTS_ROOT": "/a"}, "DOMAIN is not set"),
        ({"SKILLWEAVE_DIR": "/x", "ARTIFACTS_ROOT": "relative/a", "DOMAIN": "math"}, "ARTIFACTS_ROOT must be absolute"),
    ],
)
def test_sbatch_template_refuses_missing_settings(env, message, tmp_path):
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(SBATCH)], env={**base, **env}, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Usage:" in proc.stderr


def test_sbatch_template_usage():
    proc = subprocess.run(["bash", str(SBATCH), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "sbatch --nodes=2" in proc.stdout


def test_stage_all_submits_the_domains_then_the_fan_in(tmp_path, tiny_model_dir):
    # The debug executor runs the jobs in this process, where the test rule and prompt source exist.
    ov = overrides(tmp_path, tiny_model_dir, "domains=[math,code]", "threads=1", "hydra/launcher=local",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    array, fan_in = submit_all(ov, cluster="debug")
    assert [sorted(j.result()) for j in array] == [[f"{s}/{d}" for s in ("dpo", "filter", "generate")] for d in ("math", "code")]
    # (with dpo.rounds > 1 each array task runs every round: pipeline.run_rounds, tested in test_rounds.py)
    assert sorted(fan_in.result()) == ["eval", "merge", "zip/code", "zip/math"]
    root = tmp_path / "artifacts"
    assert all(set(manifests(root, s)) == {"math", "code"} for s in ("generate", "filter", "dpo", "zip"))
    assert set(manifests(root, "eval")) == {"all"}


def test_a_failed_domain_stops_the_local_fan_in(tmp_path, tiny_model_dir):
    # Real jobs (subprocesses): a domain left with too few pairs fails its array task; its error
    # reaches the caller and no fan-in job is submitted.
    ov = ["recipe=tiny", "model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={tmp_path / 'artifacts'}",
          "domains=[math]", "filter.min_pairs=1000", "threads=1", "hydra/launcher=local", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    with pytest.raises(Exception, match=r"filter left \d+ pairs for domain math \(filter.min_pairs=1000\)"):
        submit_all(ov)
    assert set(manifests(tmp_path / "artifacts", "generate")) == {"math"}
    assert not (tmp_path / "artifacts" / "merge").exists()


def test_stage_all_on_slurm_makes_the_fan_in_depend_on_the_array(tmp_path, tiny_model_dir, monkeypatch):
    # Stand-ins for srun and sbatch: sbatch keeps each script it is given and answers with a job id.
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_ / "sbatch").write_text(
        f'#!/bin/sh\nn=$(ls {tmp_path}/sbatch-* 2>/dev/null | wc -l)\ncp "$1" {tmp_path}/sbatch-$n\n'
        'echo "Submitted batch job $((4000 + n))"\n'
    )
    for f in bin_.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    ov = overrides(tmp_path, tiny_model_dir, "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    array, fan_in = submit_all(ov)
    assert [j.job_id for j in array] == ["4000_0", "4000_1", "4000_2"] and fan_in.job_id == "4001"
    domains_script, fan_in_script = (tmp_path / "sbatch-0").read_text(), (tmp_path / "sbatch-1").read_text()
    # array_parallelism=8, capped by submitit at the number of tasks
    assert "#SBATCH --array=0-2%3" in domains_script and "#SBATCH --partition=gpu" in domains_script
    assert "#SBATCH --dependency=afterok:4000" in fan_in_script
    assert "#SBATCH --kill-on-invalid-dep=yes" in fan_in_script
    assert "--array" not in fan_in_script
