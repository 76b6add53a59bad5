"""bench/skillzip.py, bench/generate.py and bench/dpo_step.py: a quick run writes complete, consistent rows; what they
time is the library's own code."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skillweave.models import native_bf16
from skillweave.zip.compress import compress_factors
from skillweave.zip.kernels import int8_units

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
BENCH = BENCH_DIR / "skillzip.py"
TIMED = ("backbone_ms", "bf16_backbone_ratio", "fp_lowrank_ratio", "int_path_ratio", "merged_ratio")
# The --quick stack at hidden 576, rank 16: q_proj 576x576 and up_proj 2304x576, worked by hand.
QUICK_BYTES = {
    "fp16_dense_delta_bytes": 2 * (576 * 576 + 2304 * 576),  # 3,317,760
    "fp16_factors_bytes": 2 * 16 * (576 + 576 + 2304 + 576),  # 129,024
    # int8 A and B, plus fp32 scales: one per output row and one per rank, per layer
    "int8_skillpack_bytes": 16 * (576 + 576 + 2304 + 576) + 4 * (576 + 16 + 2304 + 16),  # 76,160
    # two INT4 values a byte: A is out x 8 bytes, B is 16 x 288 bytes; same scales
    "int4_skillpack_bytes": (576 + 2304) * 8 + 2 * 16 * 288 + 4 * (576 + 16 + 2304 + 16),  # 43,904
}


def load_bench(name: str):
    """bench/<name>.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_complete_rows(tmp_path):
    out = tmp_path / "results" / "skillzip.json"
    # a few seconds on a busy 2-core box; the margin is for contention, not for the work
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(out.parent.iterdir()) == [out]  # the temp file was renamed, not left behind
    data = json.loads(out.read_text())
    assert data["threads"] == 1
    rows = data["rows"]
    assert [(r["device"], r["hidden"], r["rank"], r["tokens"]) for r in rows] == [
        ("cpu", 576, 16, 1),
        ("cpu", 576, 16, 64),
    ]
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in TIMED), r
        # every shape takes the integer path on a CPU: _int_mm with int8 units, their fp32 emulation without
        assert r["int_path_kernel"] == ("int_mm" if int8_units("cpu") else "int8_mm_fp32")
        assert {k: r[k] for k in QUICK_BYTES} == QUICK_BYTES
        assert (
            0
            < r["int4_skillpack_bytes"]
            < r["int8_skillpack_bytes"]
            < r["fp16_factors_bytes"]
            < r["fp16_dense_delta_bytes"]
        )
    assert "| 576 | 16 | 64 |" in proc.stdout


@pytest.mark.parametrize("bits", [8, 4])
def test_random_factors_have_the_layout_of_compress_factors(bits):
    """The bench skips the SVD (minutes at hidden 4096); what it times and counts must still be laid
    out as the library's factors are. Odd sizes exercise INT4's padding."""
    want = compress_factors(torch.randn(48, 37), 7, bits)
    got = load_bench("skillzip").random_factors(48, 37, 7, bits)
    assert (got.in_features, got.bits, got.rank) == (want.in_features, want.bits, want.rank)
    assert {k: (t.shape, t.dtype) for k, t in got.stored().items()} == {
        k: (t.shape, t.dtype) for k, t in want.stored().items()
    }


def test_generate_bench_runs_the_stage_sampler_on_a_tiny_model(tmp_path, tiny_model_dir, fake_vllm_python, capsys):
    out = tmp_path / "results" / "generate.json"
    args = ["--model", str(tiny_model_dir), "--batch-sizes", "1", "2", "--max-new-tokens", "4", "--repeats", "2",
            "--samples-per-prompt", "2", "--backends", "cpu-fp32", "cpu-bf16", "vllm-cpu-bf16", "--out", str(out),
            "--vllm-python", str(fake_vllm_python)]
    threads = torch.get_num_threads()
    try:  # main() sets torch's thread count for the whole process: give the session its own back
        load_bench("generate").main(args)
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    assert list(out.parent.iterdir()) == [out]  # written to a temp file and renamed
    data = json.loads(out.read_text())
    assert (data["threads"], data["max_new_tokens"], data["samples_per_prompt"]) == (1, 4, 2)
    rows = data["rows"]
    assert [(r["backend"], r["batch_size"], r["sequences_per_call"]) for r in rows] == [
        (b, n, 2 * n) for n in (1, 2) for b in ("cpu-fp32", "cpu-bf16", "vllm-cpu-bf16")
    ]
    assert data["vllm"] == "0.0+fake" and set(data["engine_start_s"]) == {"vllm-cpu-bf16"}
    # x hf: a vLLM backend over the HF backend of its device and dtype, HF rows have none
    assert [r["ratio_vs_hf"] is not None for r in rows] == [False, False, True] * 2
    assert [r["cpu_ratio_vs_hf"] is not None for r in rows] == [False, False, True] * 2
    assert all(r["cpu_seconds"] > 0 and r["tokens_per_cpu_s"] > 0 for r in rows)
    for r in rows:
        assert r["calls"] == 2 and 0 < r["new_tokens"] <= 2 * r["sequences_per_call"] * 4
        assert r["new_tokens"] == round(r["mean_new_tokens"] * 2 * r["sequences_per_call"])
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0 and r["ratio_vs_fp32"] > 0
        assert 0.0 <= r["truncated_fraction"] <= 1.0
    assert {r["ratio_vs_fp32"] for r in rows if r["backend"] == "cpu-fp32"} == {1.0}
    assert [r["speedup_vs_smallest_batch"] for r in rows if r["batch_size"] == 1] == [1.0, 1.0, 1.0]
    assert "| cpu-bf16 | 2 | 4 |" in stdout and "| vllm-cpu-bf16 | 2 | 4 |" in stdout


def test_generate_bench_times_the_stage_sampler():
    """The benchmark must measure the generate stage's real path, not a copy of it."""
    from skillweave.sampling import sample_batch

    assert load_bench("generate").sample_batch is sample_batch


DPO_STEP_BENCH = BENCH_DIR / "dpo_step.py"


@pytest.mark.skipif(not native_bf16(), reason="no bf16 units here: the benchmark refuses to time emulated bf16")
def test_dpo_step_bench_quick_run_times_both_precisions_on_the_same_pairs(tmp_path):
    out = tmp_path / "results" / "dpo_step.json"
    # two worker processes, each importing trl and training a tiny model for 3 steps: ~30 s on a quiet box
    proc = subprocess.run([sys.executable, str(DPO_STEP_BENCH), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(out.parent.iterdir()) == [out]  # written to a temp file and renamed
    data = json.loads(out.read_text())
    assert (data["threads"], data["rounds"], data["warmup_steps"], data["settings"]["pairs"]) == (1, 2, 1, 12)
    fp32, bf16 = data["rows"]
    assert (fp32["precision"], bf16["precision"]) == ("float32", "bfloat16")
    for r in data["rows"]:
        assert r["precision_recorded"] == r["precision"]  # train_dpo's own manifest metric
        assert len(r["step_s"]) == 2 and all(t > 0 for t in r["step_s"])
        # the roofline's arithmetic: 8 x parameters x tokens (gradient checkpointing), this CPU's peak per thread
        assert r["gflop_per_step"] == pytest.approx(8 * data["parameters"] * r["tokens_per_step"] / 1e9, abs=0.06)
        assert r["peak_gflops"] == {"float32": 270.0, "bfloat16": 500.0}[r["precision"]]
    assert fp32["ratio_vs_fp32"] == 1.0 and bf16["ratio_vs_fp32"] > 0
    assert fp32["tokens_per_step"] == bf16["tokens_per_step"] > 0  # the same pairs, in the same order
    delta = data["delta"]
    assert delta["delta_dtypes"] == ["float32"]
    # measured on the tiny model: relative difference 0.013, cosine 0.9999
    assert 0 < delta["relative_diff"] < 0.1 and delta["cosine"] > 0.99
    g = delta["greedy"]
    assert g["prompts"] == 2 and 0 <= g["differ_fp32_vs_bf16"] <= 2
    assert "| bfloat16 |" in proc.stdout and "greedy (2 prompts" in proc.stdout


def test_dpo_step_bench_times_the_stages_trainer():
    """The benchmark must time the training of stages dpo, lora and dpo_multitask, not a copy of it."""
    from skillweave.training import train_dpo

    assert load_bench("dpo_step").train_dpo is train_dpo


def test_decode_bench_quick_writes_every_variant(tmp_path, monkeypatch, capsys, fake_vllm_python):
    """--quick on the tiny random Llama. Dynamo's `eager` backend stands in for inductor so that the
    run takes seconds, not a compile per variant and batch size (tests/test_decoding.py compiles)."""
    from transformers import CompileConfig

    from skillweave import decoding

    def config():
        c = CompileConfig(backend="eager", fullgraph=True, dynamic=False, mode=None)
        c._compile_all_devices = True
        return c

    monkeypatch.setattr(decoding, "compile_config", config)
    bench = load_bench("decode")
    assert bench.decoding is decoding  # it times the library's own compiled path
    out = tmp_path / "results" / "decode.json"
    threads = torch.get_num_threads()
    try:  # main() sets torch's thread count for the whole process: give the session its own back
        bench.main(["--quick", "--out", str(out)])
        variants = bench.HF_VARIANTS + bench.VLLM_VARIANTS  # the vLLM rows from the fake engine (transformers)
        bench.main(["--quick", "--batch-sizes", "2", "--variants", *variants, "--vllm-python", str(fake_vllm_python),
                    "--out", str(tmp_path / "vllm.json")])
    finally:
        torch.set_num_threads(threads)
    assert sorted(out.parent.iterdir()) == [out]  # written to a temp file and renamed
    data = json.loads(out.read_text())
    assert (data["threads"], data["new_tokens"], data["repeats"]) == (1, 8, 2)
    assert data["command"] == f"python bench/decode.py --quick --out {out}"
    assert len(data["load_average_1min"]) == 2 and all(b > 0 for b in data["bandwidth_gb_s"])
    rows = data["rows"]
    assert [(r["batch"], r["variant"]) for r in rows] == [(b, v) for b in (1, 2) for v in bench.HF_VARIANTS]
    served = json.loads((tmp_path / "vllm.json").read_text())
    assert served["vllm"] == "0.0+fake" and served["engine_start_s"] > 0
    rows += served["rows"]
    assert [r["variant"] for r in served["rows"]] == variants
    for r in rows:
        assert math.isfinite(r["ms_per_step"]) and len(r["step_ms_rounds"]) == 2 and r["floor_ms"] > 0
        assert r["tokens_per_s"] == pytest.approx(1e3 * r["batch"] / r["ms_per_step"], rel=1e-2)
        if r["path"] != "vllm":  # a served step is a difference of two calls: the fake engine's is within its noise
            assert r["ms_per_step"] > 0 and r["ratio"] > 0 and r["ratio_vs_backbone"] > 0
        # the same path divides by its own backbone; compiled and served variants decode the eager twin's tokens
        assert r["ratio_vs"] == {"compiled_int": "compiled", "compiled_fp": "compiled", "vllm_lora": "vllm"}.get(
            r["variant"], "backbone")
        assert r["greedy_equal_eager"] is (None if r["path"] == "eager" else True)
    assert {r["ratio"] for r in rows if r["variant"] == "backbone"} == {1.0}
    # a skillpack adds bytes to read: the floor moves with it
    floor = {(r["batch"], r["variant"]): r["floor_ms"] for r in rows}
    assert floor[(1, "int")] > floor[(1, "backbone")] and floor[(1, "bf16")] < floor[(1, "backbone")]
    assert "| 2 | compiled_int |" in capsys.readouterr().out


def test_eval_bench_times_both_backends_on_the_same_docs(tmp_path, tiny_model_dir, fake_vllm_python, capsys):
    bench = load_bench("eval")
    from skillweave import evaluation

    assert bench.evaluate is evaluation.evaluate  # the eval stage's own call
    out = tmp_path / "results" / "eval.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--model", str(tiny_model_dir), "--quick", "--task", "skillweave_arith", "--repeats", "2",
                    "--vllm-python", str(fake_vllm_python), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    data = json.loads(out.read_text())
    assert (data["limit"], data["max_gen_toks"], data["vllm"]) == (6, 16, "0.0+fake")
    assert data["identical_answers"] == 6  # the fake engine decodes as transformers does
    hf, vllm = data["rows"]
    assert len(hf["rounds_s"]) == len(vllm["rounds_s"]) == 2 and vllm["ratio_vs_hf"] > 0
    assert hf["score"] == vllm["score"] and hf["n"] == vllm["n"] == 6
    assert "| vllm |" in capsys.readouterr().out
    for served in ("folded", "lora"):  # a skillpack row: HF on the fp path, the engine with it folded in or a LoRA
        try:
            bench.main(["--model", str(tiny_model_dir), "--quick", "--task", "skillweave_arith", "--skillpack", "fp",
                        "--served", served, "--vllm-python", str(fake_vllm_python), "--out", str(out)])
        finally:
            torch.set_num_threads(threads)
        data = json.loads(out.read_text())
        assert (data["skillpack"], data["served"], data["identical_answers"]) == ("fp", served, 6)


def test_vllm_start_bench_starts_an_engine_per_setting_and_round(tmp_path, tiny_model_dir, fake_vllm_python, capsys,
                                                               monkeypatch):
    bench = load_bench("vllm_start")
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "")  # the bench sets it for each start: undone after the test
    out = tmp_path / "vllm_start.json"
    bench.main(["--model", str(tiny_model_dir), "--rounds", "2", "--no-warm-up", "--max-new-tokens", "4",
                "--vllm-python", str(fake_vllm_python), "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["vllm"] == "0.0+fake" and data["identical_answers"] is True
    assert [(r["cache"], r["VLLM_USE_AOT_COMPILE"], len(r["rounds_s"])) for r in data["rows"]] == [
        ("aot", "1", 2), ("torch.compile", "0", 2)]
    assert data["rows"][0]["ratio_vs_aot"] == 1.0 and data["rows"][1]["ratio_vs_aot"] > 0
    assert all(r["load_failures"] == 0 for r in data["rows"])  # the fake engine has no compile cache
    assert "| torch.compile | 0 |" in capsys.readouterr().out


def test_int8_mm_bench_times_both_kernels_on_equal_products(tmp_path, capsys):
    bench = load_bench("int8_mm")
    out = tmp_path / "int8_mm.json"
    bench.main(["--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["chosen"] == ("int_mm" if int8_units("cpu") else "fp32")
    assert [(r["k"], r["n"], r["tokens"]) for r in data["rows"]] == [(k, n, m) for k, n in bench.SHAPES for m in (1, 8)]
    assert all(r["equal"] for r in data["rows"])  # both kernels give the int64 product
    assert all(r["int_mm_us"] > 0 and r["fp32_us"] > 0 and r["ratio_fp32_vs_int_mm"] > 0 for r in data["rows"])
    assert "| 8 | 1536 x 16 |" in capsys.readouterr().out
