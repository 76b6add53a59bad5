"""The delta-compression baselines as eval rows (bitdelta, delta_come), the memory budget, merge methods and
an external monolith, end to end; the compressors themselves are checked in test_compressors.py."""

from __future__ import annotations

import json
import math

import pytest
from test_pipeline import overrides, run_overrides

from skillweave.models import load_model
from skillweave.reports import apply_budget
from skillweave.zip import block_linear_names


def test_apply_budget_marks_and_lists_what_is_over():
    rows = [{"name": "base", "bytes": 100}, {"name": "dpo", "bytes": 300}, {"name": "bitdelta", "bytes": 120}]
    kept, excluded = apply_budget(rows, 150)
    assert [r["name"] for r in kept] == ["base", "bitdelta"]
    assert excluded == [{"name": "dpo", "bytes": 300}]
    assert [r["within_budget"] for r in rows] == [True, False, True]
    kept, excluded = apply_budget(rows, None)
    assert len(kept) == 3 and excluded == []


# ---- end to end


def test_pipeline_evaluates_the_baselines(tmp_path, tiny_model_dir):
    ov = overrides(tmp_path, tiny_model_dir, "eval.configurations=[base,bitdelta,delta_come,compressed_skillzip,compressed_twin]")
    refs = run_overrides(ov)
    results = json.loads((refs["eval"].path / "results.json").read_text())
    by_name = {r["name"]: r for r in results["configurations"]}
    assert list(by_name) == ["base", "bitdelta", "delta_come", "compressed_skillzip", "compressed_twin"]
    model = load_model(tiny_model_dir)
    names = block_linear_names(model)
    linears = [m for n, m in model.named_modules() if n in names]
    one_bit = sum(m.out_features * math.ceil(m.in_features / 8) + 4 for m in linears)
    base_bytes = by_name["base"]["bytes"]
    assert by_name["bitdelta"]["bytes"] == base_bytes + 3 * one_bit  # K = 3 domains
    assert base_bytes < by_name["delta_come"]["bytes"] < base_bytes + 3 * 2 * one_bit
    # any registered compressor is a baseline too (compressed_<name>): theta_0 + its reconstruction per domain
    assert base_bytes < by_name["compressed_twin"]["bytes"] and base_bytes < by_name["compressed_skillzip"]["bytes"]
    for r in by_name.values():
        assert set(r["scores"]) == {"math", "code", "instructions"}
        assert all(0.0 <= s <= 1.0 for s in r["scores"].values())


def test_pipeline_evaluates_merge_methods_and_an_external_monolith(tmp_path, tiny_model_dir, tiny_tokenizer):
    from conftest import build_tiny_model

    from skillweave.deltas import param_bytes

    external = tmp_path / "external"
    other = build_tiny_model(tiny_tokenizer, seed=1, hidden=32, train_steps=5)  # a second, different model
    other.save_pretrained(external)
    tiny_tokenizer.save_pretrained(external)
    ov = overrides(
        tmp_path, tiny_model_dir,
        "merge=ties", "eval.configurations=[merged_task_arithmetic,merged_dare_ties,external]", f"eval.external_model={external}",
    )
    refs = run_overrides(ov)
    merges = sorted(json.loads((r.path / "config.json").read_text())["config"]["merge"]["method"] for r in refs.values() if r.stage == "merge")
    assert merges == ["dare_ties", "task_arithmetic", "ties"]  # the run's own merge plus one per merged_<method> row
    results = json.loads((refs["eval"].path / "results.json").read_text())
    by_name = {r["name"]: r for r in results["configurations"]}
    assert list(by_name) == ["merged_task_arithmetic", "merged_dare_ties", "external"]
    assert by_name["external"]["bytes"] == param_bytes(load_model(external)) < by_name["merged_dare_ties"]["bytes"]
    assert by_name["merged_task_arithmetic"]["bytes"] == by_name["merged_dare_ties"]["bytes"] == param_bytes(load_model(tiny_model_dir))


def test_external_without_a_model_says_which_setting(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="eval.external_model=<HF model directory>"):
        run_overrides(overrides(tmp_path, tiny_model_dir, "stage=eval", "eval.configurations=[external]"))
