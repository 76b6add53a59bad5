"""The figures are valid PNGs drawn from a real results.json (experiments/quickstart)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from skillweave.plots import domain_bars, frontier_plot

QUICKSTART = Path(__file__).parent.parent / "experiments" / "quickstart" / "results.json"


@pytest.fixture(scope="module")
def results():
    return json.loads(QUICKSTART.read_text())


@pytest.mark.parametrize("budget", [None, 600_000_000])
@pytest.mark.parametrize("plot", [frontier_plot, domain_bars])
def test_writes_a_png(results, tmp_path, plot, budget):
    path = tmp_path / "figure.png"
    plot({**results, "budget_bytes": budget}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    h, w, _ = matplotlib.image.imread(path).shape
    assert h > 100 and w > 100
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # no temporary file left behind
