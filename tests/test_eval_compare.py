"""The paired comparison with base that eval reports (results.json `vs_base`, results.md)."""

from __future__ import annotations

import json
import math

import pytest

from skillweave.evaluation import paired_difference
from skillweave.reports import compare_with, paired_table


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
