"""Compose skillweave configs in tests exactly as `python -m skillweave` does."""

from __future__ import annotations

from contextlib import contextmanager

from hydra import initialize_config_dir

from skillweave.config import register_configs
from skillweave.core.compose import CONF_DIR, composer


@contextmanager
def hydra_context():
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        yield


def compose_config(overrides: list[str]):
    """As the CLI composes: a domain's `domain_overrides` under the given overrides."""
    return composer()(overrides)
