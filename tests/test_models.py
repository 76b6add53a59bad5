"""Backbone fingerprints: what they cover, where they are cached, and damaged model directories."""

from __future__ import annotations

import json
import shutil

import pytest

from skillweave.core.errors import ModelError
from skillweave.models import model_fingerprint


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("SKILLWEAVE_CACHE", str(tmp_path / "cache"))
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_the_fingerprint_is_cached_outside_the_model_directory(model_copy):
    before = sorted(p.name for p in model_copy.iterdir())
    fp = model_fingerprint(model_copy)
    assert sorted(p.name for p in model_copy.iterdir()) == before  # nothing written into the user's directory
    assert model_fingerprint(model_copy) == fp and len(list((model_copy.parent / "cache" / "fingerprints").iterdir())) == 1


@pytest.mark.parametrize(
    "key, value, changes",
    [
        ("rms_norm_eps", 1e-3, True),  # another model under the same weights
        ("rope_theta", 1234.0, True),
        ("transformers_version", "0.0.1", False),  # volatile: not what the model computes
        ("dtype", "bfloat16", False),
    ],
)
def test_the_fingerprint_covers_the_config(model_copy, key, value, changes):
    fp = model_fingerprint(model_copy)
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, key: value}))
    assert (model_fingerprint(model_copy) != fp) is changes


def test_truncated_weights_are_not_fingerprinted_from_a_stale_cache(model_copy):
    model_fingerprint(model_copy)
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"unreadable weights .*: restore or re-download the model"):
        model_fingerprint(model_copy)


def test_an_invalid_config_is_one_clear_error(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"config.json: unreadable model config .*: restore the model directory"):
        model_fingerprint(model_copy)


def test_publish_dir_replaces_a_copy_without_its_marker_and_keeps_a_finished_one(tmp_path):
    from skillweave.models import publish_dir

    def finished(name, marker=True):
        d = tmp_path / name
        d.mkdir()
        (d / "weights").write_text(name)
        if marker:
            (d / "done.json").write_text("{}")
        return d

    out = finished("out", marker=False)  # an older layout: converted again on every call until replaced
    publish_dir(finished("tmp1"), out, "done.json")
    assert (out / "weights").read_text() == "tmp1" and not (tmp_path / "tmp1").exists()
    publish_dir(finished("tmp2"), out, "done.json")  # a finished copy wins; ours is dropped
    assert (out / "weights").read_text() == "tmp1" and not (tmp_path / "tmp2").exists()
