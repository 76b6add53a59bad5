"""experiments/paper_table/answers.py: the paper's questions from eval artifacts, on answers with known numbers."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("paper_answers", Path(__file__).parents[1] / "experiments" / "paper_table" / "answers.py")
answers = sys.modules["paper_answers"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(answers)

N = 100
# Documents answered right (of 100 per domain); base answers none.
RIGHT = {
    "arith": {"dpo": 40, "merged_ties": 20, "skillweave": 38, "skillweave_routed": 30, "bitdelta": 10},
    "code": {"dpo": 30, "merged_ties": 30, "skillweave": 30, "skillweave_routed": 30, "bitdelta": 30},
    "dialogue": {"dpo": 1, "merged_ties": 0, "skillweave": 1, "skillweave_routed": 1, "bitdelta": 0},  # no own gain
}
ROWS = ["base", "dpo", "merged_ties", "bitdelta", "skillweave", "skillweave_routed"]


def write_eval(path: Path, tasks: dict[str, str], right: dict[str, dict[str, int]]) -> Path:
    (path / "samples").mkdir(parents=True)
    configurations = []
    for name in ROWS:
        row = {"name": name, "bytes": (3 if name == "dpo" else 1) * 2**20 * 500}
        if name == "skillweave_routed":
            row["details"] = {"router_accuracy": 0.75, "confusion": {"domains": list(tasks), "matrix": [[3, 1], [0, 4]]}}
        configurations.append(row)
        for domain in tasks:
            k = right[domain].get(name, 0)
            lines = [json.dumps({"doc_id": i, "score": float(i < k), "response": ""}) for i in range(N)]
            (path / "samples" / f"{name}-{domain}.jsonl").write_text("\n".join(lines) + "\n")
    (path / "results.json").write_text(json.dumps({"tasks": tasks, "configurations": configurations}))
    return path


@pytest.fixture
def table(tmp_path):
    first = write_eval(tmp_path / "a", {"arith": "skillweave_arith", "code": "skillweave_codetasks", "dialogue": "skillweave_dialogue"}, RIGHT)
    return answers.load([first])


def test_paired_differences_and_shares_of_the_own_gain(table):
    gain = answers.paired(table, "dpo", "base", "arith (skillweave_arith)")
    assert gain.value == pytest.approx(0.40) and gain.n == N
    assert gain.stderr == pytest.approx(math.sqrt(0.4 * 0.6 * N / (N - 1)) / math.sqrt(N))

    kept = answers.share(table, "merged_ties", "arith (skillweave_arith)")
    assert kept.value == pytest.approx(0.5)
    assert 0.02 < kept.stderr < 0.2  # bootstrap over documents, seeded
    assert answers.share(table, "merged_ties", "arith (skillweave_arith)") == kept
    assert answers.share(table, "skillweave", "code (skillweave_codetasks)").value == pytest.approx(1.0)
    # One document of 100 is no gain to take a share of.
    assert answers.share(table, "skillweave", "dialogue (skillweave_dialogue)") is None
    assert answers.share(table, "missing_row", "arith (skillweave_arith)") is None


def test_averages_and_verdicts():
    e = answers.average([answers.Estimate(-0.2, 0.04, 100), answers.Estimate(0.0, 0.0, 100)])
    assert (e.value, e.stderr, e.n) == (pytest.approx(-0.1), pytest.approx(0.02), 200)
    assert answers.verdict(e, -1) == "holds" and answers.verdict(e) == "fails"
    assert answers.verdict(answers.Estimate(0.03, 0.02, 100)) == "unresolved"
    assert answers.verdict(answers.Estimate(0.0, 0.0, 100)) == "unresolved"
    assert answers.verdict(None) == "not measured"
    assert answers.average([e, None]) is None


def test_the_report_answers_each_question(table):
    md, numbers = answers.answers(table)
    claims = {c["claim"]: c["verdict"] for c in numbers["claims"]}
    assert claims["DPO gains on each domain (dpo > base, average)"] == "holds"
    assert claims["Merging loses specialisation (merged_ties < dpo, average)"] == "holds"
    assert claims["Skillweave recovers it (skillweave > merged_ties, average)"] == "holds"
    assert claims["Skillweave loses to dpo (skillweave < dpo, average)"] == "unresolved"
    assert claims["Skillweave beats bitdelta at near-equal bytes (average)"] == "holds"
    assert numbers["retention"]["skillweave"]["arith (skillweave_arith)"]["value"] == pytest.approx(0.95)
    assert numbers["kept_share"]["merged_ties"]["dialogue (skillweave_dialogue)"] is None
    assert numbers["router"]["accuracy"] == 0.75
    assert "| arith | 3 | 1 |" in md and "| dpo | 1500.0 | 3.00 |" in md
    assert "| skillweave | 95% ± " in md and "| dpo | +40.0 ± 4.9 | +30.0 ± 4.6 | +1.0 ± 1.0 | +23.7 ± 2.3 |" in md
    assert "multitask" not in md and "lora" not in md  # rows absent from the eval are left out


def test_the_integer_path_check_is_paired_with_skillweave_on_its_documents(tmp_path):
    first = write_eval(tmp_path / "a", {"arith": "skillweave_arith", "code": "skillweave_codetasks"}, RIGHT)
    results = json.loads((first / "results.json").read_text())
    results["configurations"].append({"name": "skillweave_intcheck", "bytes": 2**20 * 500})
    (first / "results.json").write_text(json.dumps(results))
    for domain, k in (("arith", 19), ("code", 20)):  # the first 20 documents; skillweave answers all 20 right
        lines = [json.dumps({"doc_id": i, "score": float(i < k), "response": ""}) for i in range(20)]
        (first / "samples" / f"skillweave_intcheck-{domain}.jsonl").write_text("\n".join(lines) + "\n")
    md, numbers = answers.answers(answers.load([first]))
    check = numbers["integer_path"]["skillweave_intcheck - skillweave"]
    assert check["arith (skillweave_arith)"] == {"value": pytest.approx(-0.05), "stderr": pytest.approx(0.05), "n": 20}
    assert check["code (skillweave_codetasks)"] == {"value": 0.0, "stderr": 0.0, "n": 20}
    assert "| skillweave_intcheck - skillweave | -5.0 ± 5.0 | +0.0 ± 0.0 | -2.5 ± 2.5 |" in md


def test_agreement_counts_the_documents_whose_response_equals_dpos(tmp_path):
    """Scores alike, answers not: skillweave repeats dpo's answer on 80 of 100 arith documents, merged_ties
    on 30; a row without responses (samples from before they were kept) has no agreement."""
    first = write_eval(tmp_path / "a", {"arith": "skillweave_arith", "code": "skillweave_codetasks"}, RIGHT)
    results = json.loads((first / "results.json").read_text())
    for r in results["configurations"]:
        engine = {"skillweave_routed": "hf", "skillweave": "vllm 0.32.0, folded"}.get(r["name"], "vllm 0.32.0")
        r["details"] = {"served_by": {"arith": engine}}
    (first / "results.json").write_text(json.dumps(results))
    same = {"dpo": N, "skillweave": 80, "merged_ties": 30, "skillweave_routed": 80}
    for name in ROWS:
        path = first / "samples" / f"{name}-arith.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        for a in lines:
            a["response"] = f"answer {a['doc_id']}" if a["doc_id"] < same.get(name, 0) else f"{name} {a['doc_id']}"
            if name == "bitdelta":
                del a["response"]
        path.write_text("".join(json.dumps(a) + "\n" for a in lines))
    table = answers.load([first])
    assert answers.agreement(table, "skillweave", "dpo", "arith (skillweave_arith)") == answers.Estimate(
        0.8, pytest.approx(0.04), N)
    assert answers.agreement(table, "merged_ties", "dpo", "arith (skillweave_arith)").value == pytest.approx(0.3)
    assert answers.agreement(table, "bitdelta", "dpo", "arith (skillweave_arith)") is None
    # code's responses are all "" in write_eval: every row agrees with dpo there.
    assert answers.agreement(table, "base", "dpo", "code (skillweave_codetasks)").value == 1.0
    md, numbers = answers.answers(table)
    assert numbers["agreement"]["merged_ties"]["arith (skillweave_arith)"]["value"] == pytest.approx(0.3)
    assert "| skillweave | 80% ± 4% | 100% ± 0% | 90% ± 2% |" in md
    assert "| bitdelta | - | 100% ± 0% | - |" in md
    assert "Decoded by another engine than dpo (its numerics differ too): skillweave_routed." in md


def test_a_second_eval_adds_its_columns_and_the_cli_writes_both_files(tmp_path, capsys):
    first = write_eval(tmp_path / "a", {"arith": "skillweave_arith", "code": "skillweave_codetasks"}, RIGHT)
    second = write_eval(tmp_path / "b", {"arith": "skillweave_arith", "code": "skillweave_humaneval"}, RIGHT)
    table = answers.load([first, second])
    assert table.columns == ["arith (skillweave_arith)", "code (skillweave_codetasks)", "code (skillweave_humaneval)"]
    answers.main([str(first), str(second), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "answers.json").read_text())["columns"] == table.columns
    assert (tmp_path / "out" / "answers.md").read_text() in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no results.json"):
        answers.main([str(tmp_path / "out")])
    shutil.rmtree(first / "samples")  # a collected folder: results.json without the answers
    with pytest.raises(SystemExit, match="no per-document answers"):
        answers.main([str(first), "--out", str(tmp_path / "none")])


def test_a_variant_eval_adds_its_other_rows_paired_with_theirs(tmp_path, capsys):
    """A rank-32 skillweave row (another artifact) beside the rank-16 one; base, reused, is not a variant."""
    tasks = {"arith": "skillweave_arith", "code": "skillweave_codetasks"}
    first = write_eval(tmp_path / "a", tasks, RIGHT)
    second = write_eval(tmp_path / "b", tasks, {d: r | {"skillweave": r["dpo"]} for d, r in RIGHT.items()})
    for path, rank in ((first, 16), (second, 32)):
        results = json.loads((path / "results.json").read_text())
        for r in results["configurations"]:
            r["row"] = f"eval_rows/{r['name']}-" + ("r32" if r["name"] == "skillweave" and rank == 32 else "k")
        (path / "results.json").write_text(json.dumps(results))
    answers.main([str(first), "--variant", f"rank32={second}", "--out", str(tmp_path / "out")])
    md = capsys.readouterr().out
    numbers = json.loads((tmp_path / "out" / "answers.json").read_text())
    assert list(numbers["variants"]) == ["skillweave@rank32 - skillweave"]
    rank32 = numbers["variants"]["skillweave@rank32 - skillweave"]
    assert rank32["arith (skillweave_arith)"]["value"] == pytest.approx(0.02)
    assert "| skillweave@rank32 | 100% ± 0% | 100% ± 0% |" in md  # rank 32 answers as dpo does: all of the gain
    assert "| skillweave@rank32 | 500.0 | 1.00 |" in md
    assert numbers["retention"]["skillweave"]["arith (skillweave_arith)"]["value"] == pytest.approx(0.95)
    with pytest.raises(SystemExit, match="--variant rank32: write LABEL="):
        answers.main([str(first), "--variant", "rank32"])


def test_the_cost_table_sums_each_stages_manifests(tmp_path):
    manifests = {"dpo/arith": {"seconds": 5408.0, "runs": 3}, "dpo/code": {"seconds": 2386.0},
                 "eval_rows/base": {"seconds": 600.0, "runs": 1}, "generate/arith": {"seconds": None}}
    table = answers.cost(manifests)
    assert "| dpo/arith | 5408 | 3 |" in table and "| dpo/code | 2386 | last |" in table  # last: before run clocks
    assert "| dpo | 7794 | 2.2 |" in table and "| all | 8394 | 2.3 |" in table
    assert "generate" not in table  # no seconds recorded: left out, not counted as 0
    first = write_eval(tmp_path / "a", {"arith": "skillweave_arith"}, RIGHT)
    (tmp_path / "m.json").write_text(json.dumps(manifests))
    answers.main([str(first), "--out", str(tmp_path / "out"), "--manifests", str(tmp_path / "m.json")])
    assert "| all | 8394 | 2.3 |" in (tmp_path / "out" / "answers.md").read_text()
    assert json.loads((tmp_path / "out" / "answers.json").read_text())["seconds"]["dpo/code"] == 2386.0


def test_the_zip_sweep_table_ranks_settings_by_their_fidelity(tmp_path, capsys):
    from dataclasses import asdict

    from skillweave.config import ZipConfig

    spec = importlib.util.spec_from_file_location("zip_sweep", Path(__file__).parents[1] / "experiments" / "paper_table" / "zip_sweep.py")
    sweep = sys.modules["zip_sweep"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)

    def zip_artifact(key, kl, fidelity_prompts=16, **changed):
        path = tmp_path / "zip" / f"arith-{key}"
        path.mkdir(parents=True)
        settings = asdict(ZipConfig()) | {"fidelity_prompts": fidelity_prompts} | changed
        (path / "config.json").write_text(json.dumps({"config": {"zip": settings}}))
        metrics = {"bytes": 2048, "mean_layer_rel_error": 0.5, "embedding_rel_error": 0.3}
        if fidelity_prompts:
            metrics |= {"kl_skillpack": kl, "kl_skillpack_fp": kl / 2, "kl_backbone": 0.04}
        (path / "manifest.json").write_text(json.dumps({"metrics": metrics}))

    zip_artifact("k1", 0.01)
    zip_artifact("k2", 0.002, rank=64)
    zip_artifact("k3", 0.03, bits=4)
    zip_artifact("k4", 0.0, fidelity_prompts=0)  # no fidelity measured: not a row
    (tmp_path / "zip" / "arith-k5").mkdir()  # unfinished
    got = sweep.rows(tmp_path, "arith")
    assert [r["settings"] for r in got] == [{"rank": 64}, {}, {"bits": 4}]
    assert [r["kept"] for r in got] == [pytest.approx(0.95), pytest.approx(0.75), pytest.approx(0.25)]
    sweep.main([str(tmp_path), "arith", "--out", str(tmp_path / "sweep.json")])
    printed = capsys.readouterr().out
    assert "| rank=64 | 16 | 2 | 0.500 | 0.300 | 0.00200 | 0.00100 | 0.04000 | 95.0% |" in printed
    assert "| defaults |" in printed and len(json.loads((tmp_path / "sweep.json").read_text())) == 3
    with pytest.raises(SystemExit, match="no complete zip/code-"):
        sweep.main([str(tmp_path), "code"])
