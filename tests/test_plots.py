"""The figures are valid PNGs drawn from a real results.json (experiments/quickstart)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import pytest

from skillweave.plots import average_stderr, documents, domain_bars, frontier_plot, on_a_subset, paired_bars

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


def test_the_frontiers_error_bar_is_the_averages_stderr():
    assert average_stderr({"stderr": {"a": 0.03, "b": 0.04}}) == pytest.approx(0.025)
    assert average_stderr({"stderr": {"a": 0.03, "b": None}}) == pytest.approx(0.015)  # b holds no spread
    assert math.isnan(average_stderr({"stderr": {"a": math.nan}}))


def test_the_frontier_draws_one_error_bar_per_configuration(results, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn = []
    real = Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda self, x, y, yerr=None, **k: (drawn.append((x, y, yerr)), real(self, x, y, yerr=yerr, **k))[1])
    frontier_plot(results, tmp_path / "f.png")
    assert [(x, y) for x, y, _ in drawn] == [(r["bytes"], 100 * r["average"]) for r in results["configurations"]]
    assert [e for _, _, e in drawn] == [pytest.approx(100 * average_stderr(r)) for r in results["configurations"]]


def with_paired(results: dict) -> dict:
    """The quickstart's rows, each but base compared with base (made-up differences, one cell missing)."""
    rows = []
    for k, r in enumerate(results["configurations"]):
        vs = {d: {"delta": 0.01 * k * (j + 1), "stderr": 0.005 * k, "changed": 0.1, "n": 10} for j, d in enumerate(results["tasks"])}
        if k == 2:
            vs.pop(next(iter(results["tasks"])))
        rows.append(r | ({"vs_base": vs} if k else {}))
    return results | {"configurations": rows}


def test_paired_bars_are_the_differences_with_two_standard_errors(results, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn = []
    real = Axes.bar
    monkeypatch.setattr(Axes, "bar", lambda self, x, h, w, yerr=None, **k: (drawn.append((list(h), list(yerr))), real(self, x, h, w, yerr=yerr, **k))[1])
    paired = with_paired(results)
    assert paired_bars(paired, "base", tmp_path / "p.png")
    domains = list(results["tasks"])
    expected = []
    for r in paired["configurations"][1:]:
        cells = [r["vs_base"].get(d) for d in domains]
        expected.append(([100 * c["delta"] if c else math.nan for c in cells], [200 * c["stderr"] if c else 0.0 for c in cells]))
    assert drawn == [(pytest.approx(h, nan_ok=True), pytest.approx(e)) for h, e in expected]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not paired_bars(results, "base", tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def with_a_subset_row(results: dict) -> dict:
    """The quickstart's rows, one task smaller than the others (4 documents), plus a row scored on the first
    3 documents of each task, as skillweave_intcheck is."""
    rows = [r | {"n": {**r["n"], "code": 4}} for r in results["configurations"]]
    sub = rows[-1] | {"name": "skillweave_intcheck", "n": {d: 3 for d in results["tasks"]}}
    return results | {"configurations": [*rows, sub]}


def test_a_row_on_a_subset_is_marked_and_the_title_gives_each_tasks_documents(results, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    res = with_a_subset_row(results)
    full = documents(res)
    assert full == {"code": 4, "instructions": 10, "math": 10}  # not the limit (10) where a task holds fewer
    assert [on_a_subset(r, full) for r in res["configurations"]] == [None] * len(results["configurations"]) + [3]
    drawn, titles = [], []
    real_eb, real_bar, real_title = Axes.errorbar, Axes.bar, Axes.set_title

    def errorbar(self, x, y, yerr=None, **k):
        if "mfc" in k:  # the frontier's points, not the error bars that Axes.bar draws through errorbar
            drawn.append((k["label"], k["mfc"]))
        return real_eb(self, x, y, yerr=yerr, **k)

    monkeypatch.setattr(Axes, "errorbar", errorbar)
    monkeypatch.setattr(Axes, "bar", lambda self, x, h, w, **k: (drawn.append((k["label"], k["hatch"])), real_bar(self, x, h, w, **k))[1])
    monkeypatch.setattr(Axes, "set_title", lambda self, t, **k: (titles.append(t), real_title(self, t, **k))[1])
    frontier_plot(res, tmp_path / "f.png")
    domain_bars(res, tmp_path / "d.png")
    n = len(res["configurations"])
    frontier, bars = drawn[:n], drawn[n:]
    assert frontier[-1] == ("skillweave_intcheck (first 3 docs: not comparable)", "none")
    assert all(mfc != "none" and "first" not in label for label, mfc in frontier[:-1])
    assert bars[-1] == ("skillweave_intcheck (first 3 docs: not comparable)", "//")
    assert [h for _, h in bars[:-1]] == [None] * (n - 1)
    assert titles == ["score vs memory (documents per task: code 4, instructions 10, math 10)",
                      "documents per task: code 4, instructions 10, math 10"]
