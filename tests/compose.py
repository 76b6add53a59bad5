"""Compose skillweave configs in tests exactly as `python -m skillweave` does."""

from __future__ import annotations

from contextlib import contextmanager

from hydra import compose, initialize_config_dir

from skillweave.config import register_configs, to_config
from skillweave.core.compose import CONF_DIR


@contextmanager
def hydra_context():
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        yield


def compose_config(overrides: list[str]):
    return to_config(compose(config_name="config", overrides=overrides))
