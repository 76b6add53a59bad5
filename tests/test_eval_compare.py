"""The paired comparison with base that eval reports (results.json `vs_base`, results.md)."""

from __future__ import annotations

import json
import math

import pytest

from skillweave.evaluation import paired_difference
from skillweave.reports import compare_with, lineage, paired_table


def _write(path, scores, responses):
    path.write_text("".join(json.dumps({"doc_id": i, "score": s, "response": r}) + "\n"
                            for i, (s, r) in enumerate(zip(scores, responses))))


def test_paired_difference_by_hand():
    # diffs 0, 1, 0, 0: mean 0.25, sample std sqrt((3 * 0.25**2 + 0.75**2) / 3) = 0.5, stderr 0.5 / 2
    assert paired_difference([1, 0, 1, 0], [1, 1, 1, 0]) == pytest.approx((0.25, 0.25))
    assert paired_difference([1, 0], [1, 0]) == (0.0, 0.0)
    assert math.isnan(paired_difference([0], [1])[1])
    with pytest.raises(ValueError, match="at least one"):
        paired_difference([], [])


def test_every_row_is_paired_with_base_on_the_documents_both_answered(tmp_path):
    _write(tmp_path / "base-math.jsonl", [1, 0, 1, 0], ["a", "b", "c", "d"])
    _write(tmp_path / "dpo-math.jsonl", [1, 1, 1, 0], ["a", "B", "c", "d"])
    rows = [{"name": "base", "scores": {"math": 0.5}}, {"name": "dpo", "scores": {"math": 0.75}},
            {"name": "skillweave_routed", "scores": {"math": 0.5}}]  # no answers kept: not paired
    compare_with(rows, tmp_path)
    assert "vs_base" not in rows[0] and "vs_base" not in rows[2]
    assert rows[1]["vs_base"]["math"] == pytest.approx({"delta": 0.25, "stderr": 0.25, "changed": 0.25, "n": 4})
    table = paired_table({"tasks": {"math": "skillweave_math"}, "configurations": rows})
    assert "| dpo | +25.0 ± 25.0 (25%) |" in table


def test_without_base_nothing_is_paired(tmp_path):
    rows = [{"name": "dpo", "scores": {"math": 0.75}}]
    compare_with(rows, tmp_path)
    assert rows == [{"name": "dpo", "scores": {"math": 0.75}}] and paired_table({"tasks": {}, "configurations": rows}) == ""


def test_lineage_walks_every_artifact_behind_a_row_down_to_generate(tmp_path):
    def artifact(stage, label, key, inputs, seconds, **runs):
        path = tmp_path / stage / f"{label}-{key}"
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"stage": stage, "label": label, "inputs": inputs}))
        (path / "manifest.json").write_text(json.dumps({"metrics": {"key": key}, "seconds": seconds, **runs}))
        return path

    artifact("generate", "math", "k1", {}, 10.0)
    artifact("dpo", "math", "k2", {"generate": "k1"}, 20.0, seconds_all_runs=35.0, runs=2)  # resumed once
    artifact("merge", "all", "k3", {"dpo_math": "k2"}, 3.0)
    artifact("merge", "all", "k4", {"dpo_math": "k2"}, 4.0)  # another merge method: same stage and label
    row = artifact("eval_rows", "merged", "k5", {"a": "k3", "b": "k4"}, 50.0)
    artifact("dpo", "code", "k6", {}, 99.0)  # not read by the row
    (tmp_path / "dpo" / "code-k7").mkdir()  # unfinished: no manifest

    got = lineage(tmp_path, [row])
    assert set(got) == {"eval_rows/merged", "merge/all", "merge/all/k3", "dpo/math", "generate/math"}
    assert got["generate/math"] == {"metrics": {"key": "k1"}, "seconds": 10.0, "runs": None}  # before run clocks
    assert got["dpo/math"] == {"metrics": {"key": "k2"}, "seconds": 35.0, "runs": 2}  # both runs' time
    assert sorted(m["seconds"] for n, m in got.items() if n.startswith("merge/")) == [3.0, 4.0]
    assert list(got) == sorted(got)
    assert set(lineage(tmp_path, [], ("k2", "k7"))) == {"dpo/math", "generate/math"}  # by key; k7 is not complete
