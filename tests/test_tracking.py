"""W&B: the mode in effect, sweep grouping, and an offline eval run written from a real results.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from skillweave.core.artifacts import make_ref
from skillweave.plots import domain_bars, frontier_plot, paired_bars
from skillweave.reports import log_results
from skillweave.tracking import scoped_env, wandb_env, wandb_group, wandb_mode
from compose import compose_config, hydra_context
from test_plots import with_paired

QUICKSTART = Path(__file__).parent.parent / "experiments" / "quickstart" / "results.json"


@pytest.fixture(autouse=True)
def _hydra():
    with hydra_context():
        yield


@pytest.mark.parametrize(
    "env, configured, expected",
    [
        (None, "offline", "offline"),  # the default: offline, no login needed
        ("disabled", "offline", "disabled"),  # the environment wins (make test sets disabled)
        ("online", "disabled", "online"),  # a cluster job can switch it on without touching configs
    ],
)
def test_mode(monkeypatch, env, configured, expected):
    cfg = compose_config([f"wandb.mode={configured}"])
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    assert wandb_mode(cfg) == expected


def test_bad_mode_names_the_choices(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="not one of disabled, offline, online"):
        wandb_mode(compose_config([]))


def test_group_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    cfg = compose_config([f"artifacts_root={tmp_path}", "wandb.group=ablation-1"])
    assert wandb_group(cfg) == "ablation-1"
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    env = wandb_env(cfg)
    assert env["WANDB_RUN_GROUP"] == "ablation-1" and env["WANDB_DIR"] == str(tmp_path / "wandb")
    assert env["WANDB_CACHE_DIR"] == str(tmp_path / "wandb" / "cache")  # nothing in ~/.cache
    assert wandb_group(compose_config([])) is None  # a single run outside a sweep is ungrouped


def test_scoped_env_puts_back_what_was_there(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    with scoped_env({"WANDB_MODE": "offline", "WANDB_PROJECT": "p"}):
        assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_PROJECT"] == "p"
    assert os.environ["WANDB_MODE"] == "disabled" and "WANDB_PROJECT" not in os.environ


def test_offline_eval_run_is_written(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    results = json.loads(QUICKSTART.read_text())
    ref = make_ref(tmp_path / "artifacts", "eval", "all", {}, {})
    ref.path.mkdir(parents=True)
    frontier_plot(results, ref.path / "frontier.png")
    domain_bars(results, ref.path / "domains.png")
    paired_bars(with_paired(results), "base", ref.path / "paired_base.png")
    log_results(compose_config([f"artifacts_root={tmp_path / 'artifacts'}"]), results, ref)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_trainer_run_after_a_stage_run_stays_offline(monkeypatch, tmp_path):
    """stage=dev runs filter (a wandb_run) then DPO (the Trainer's callback: wandb.init with only
    WANDB_MODE in the environment) in one process; wandb reads the environment once per process, so
    without close_wandb the second init ignored WANDB_MODE=offline and asked for an API key."""
    import wandb

    from skillweave.tracking import close_wandb, wandb_run

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_config(["wandb.mode=offline", f"artifacts_root={tmp_path}"])
    with wandb_run(cfg, job_type="filter", name="filter-x", config={}):
        pass
    with scoped_env(wandb_env(cfg)):
        run = wandb.init(project=os.environ["WANDB_PROJECT"])  # what transformers' WandbCallback calls
        assert run.settings.mode == "offline"
        close_wandb()
    assert wandb.run is None
