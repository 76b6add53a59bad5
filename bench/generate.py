"""Sampling throughput of the generate stage: new tokens per second per batch size, backend and dtype.

Each call is the stage's own `sample_batch` (skillweave/stages/generate.py): a batch of chat prompts,
`samples_per_prompt` sampled answers each, cut at the first end token. "Batch size" is the stage's
`domain.sampling.batch_size`, prompts per `generate()` call, so one call decodes batch_size x
samples_per_prompt sequences. Tokens are what the stage counts (`n_tokens`: up to the end token), so
tokens/s here is the figure the stage reports as `tokens_per_s`; a batch keeps decoding until its
longest sequence stops, and that padding is the cost of batching that this number includes.

Backends: `cpu-fp32` and `cpu-bf16` (the model loaded as the stage loads it, `load_model(dir, dtype)`),
`cuda-bf16` / `cuda-fp32` when torch sees a GPU, and `vllm-cpu-bf16` / `vllm-cpu-fp32` (and vllm-cuda-*):
the stage's vLLM path (`model.generation_backend=vllm`, skillweave.engines: an engine process of
vLLM's own environment, `--vllm-python`, on `--threads` threads as the HF backends), by default
where that environment exists. Per batch size, every backend is called once to warm up, then in
`repeats` rounds, the order rotated each round and the same seed for every backend within a round;
`x fp32` is the median over rounds of the backend's tokens/s over the HF fp32 backend's on its device
in the same round, `x hf` a vLLM backend's over the HF backend of its device and dtype, so contention
from other processes hits both sides of a ratio. Absolute tokens/s on a shared machine are not facts;
the ratios are what to compare. An engine's start (load and compile warm-up) is reported apart. CPU
seconds per call are this process's (HF) or every process of the engine's (vLLM: its model worker and
its scheduler, which polls): `tokens/CPU-s` says what a backend costs in cores, not only in wall time.

    python bench/generate.py                          # embedded SmolLM2-135M, batch 1..32 (minutes)
    python bench/generate.py --quick                  # batch 1 and 4, 16 new tokens: about a minute
    python bench/generate.py --model /abs/hf/dir --batch-sizes 8 32 --max-new-tokens 128
    python bench/generate.py --backends cpu-bf16 vllm-cpu-bf16 --batch-sizes 8 16 32   # hf vs vllm
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch

from skillweave.app import load_plugins
from skillweave.config import SamplingConfig
from skillweave.core.artifacts import atomic_write_json
from skillweave.engines import VLLMEngine, vllm_python
from skillweave.models import cache_dir, chat_prompt, load_model, load_tokenizer, resolve_model_dir
from skillweave.prompts import PROMPT_SOURCES
from skillweave.sampling import sample_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, fill_preset  # noqa: E402  (bench/common.py)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "generate.json"
GRID = {"batch_sizes": [1, 4, 8, 16, 32], "max_new_tokens": 64, "repeats": 3}
QUICK = {"batch_sizes": [1, 4], "max_new_tokens": 16, "repeats": 2}
BACKENDS = {"cpu-fp32": ("cpu", torch.float32), "cpu-bf16": ("cpu", torch.bfloat16),
            "cuda-fp32": ("cuda", torch.float32), "cuda-bf16": ("cuda", torch.bfloat16)}
BACKENDS |= {f"vllm-{name}": spec for name, spec in BACKENDS.items()}


def default_backends(vllm: bool) -> list[str]:
    """Both CPU dtypes, both CUDA dtypes when torch sees a GPU; the same through vLLM where it is installed."""
    hf = ["cpu-fp32", "cpu-bf16"] + (["cuda-fp32", "cuda-bf16"] if torch.cuda.is_available() else [])
    return hf + [f"vllm-{b}" for b in hf] * vllm


def reference_backend(backend: str) -> str:
    """The HF fp32 backend on the same device: what `x fp32` divides by."""
    return f"{BACKENDS[backend][0]}-fp32"


def timed_call(model, tok, batch: list[dict], sampling: SamplingConfig, seed: int) -> tuple[float, list[dict], float]:
    """Seconds for one `sample_batch` call (synchronised on CUDA; a VLLMEngine returns when done), its rows,
    and the CPU seconds it used: this process's, or the engine's processes' (its worker and its scheduler)."""
    engine = model if isinstance(model, VLLMEngine) else None
    cuda = engine is None and model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(model.device)
    cpu = engine.cpu_seconds if engine else time.process_time
    c0, t0 = cpu(), time.perf_counter()
    rows = sample_batch(None if engine else model, tok, batch, sampling, seed=seed, engine=engine)
    if cuda:
        torch.cuda.synchronize(model.device)
    return time.perf_counter() - t0, rows, cpu() - c0


def same_round_ratio(per_round: dict, name: str, ref: str) -> float | None:
    """Median over rounds of name's tokens/s over ref's in the same round (None when ref was not run)."""
    if ref not in per_round:
        return None
    rate = {n: [sum(row["n_tokens"] for row in rs) / s for s, rs, _ in per_round[n]] for n in (name, ref)}
    return round(statistics.median(a / b for a, b in zip(rate[name], rate[ref])), 3)


def bench_batch_size(
    models: dict, tok, prompts: list[dict], batch_size: int, sampling: SamplingConfig, repeats: int
) -> list[dict]:
    """One row per backend at this batch size: tokens/s over all rounds, and the per-round ratios."""
    batch = prompts[:batch_size]
    names = list(models)
    for name in names:  # warm-up: first-call allocations, oneDNN / cuBLAS kernel selection
        timed_call(models[name], tok, batch, sampling, seed=1_000_000)
    per_round: dict[str, list[tuple[float, list[dict], float]]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            per_round[name].append(timed_call(models[name], tok, batch, sampling, seed=r))
    rows = []
    for name in names:
        calls = per_round[name]
        seconds = sum(s for s, _, _ in calls)
        cpu_seconds = sum(c for _, _, c in calls)
        tokens = sum(row["n_tokens"] for _, rs, _ in calls for row in rs)
        sequences = [row for _, rs, _ in calls for row in rs]
        ratio = same_round_ratio(per_round, name, reference_backend(name))
        device, dtype = BACKENDS[name]
        rows.append(
            {
                "backend": name,
                "device": device,
                "dtype": str(dtype).removeprefix("torch."),
                "batch_size": batch_size,
                "sequences_per_call": batch_size * sampling.samples_per_prompt,
                "calls": len(calls),
                "new_tokens": tokens,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 2),
                "median_call_s": round(statistics.median(s for s, _, _ in calls), 3),
                "cpu_seconds": round(cpu_seconds, 2),
                "tokens_per_cpu_s": round(tokens / cpu_seconds, 2) if cpu_seconds else None,
                "ratio_vs_fp32": ratio,
                "ratio_vs_hf": same_round_ratio(per_round, name, name.removeprefix("vllm-")) if name.startswith("vllm-") else None,
                "mean_new_tokens": round(tokens / len(sequences), 1),
                "truncated_fraction": round(sum(row["truncated"] for row in sequences) / len(sequences), 3),
            }
        )
        print(f"  batch {batch_size} {name}: {tokens / seconds:.1f} tok/s", file=sys.stderr, flush=True)
    by_name = {r["backend"]: r for r in rows}
    for r in rows:  # CPU efficiency: a vLLM engine's scheduler process works beside its model's threads
        hf = by_name.get(r["backend"].removeprefix("vllm-")) if r["backend"].startswith("vllm-") else None
        r["cpu_ratio_vs_hf"] = (round(r["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"], 3)
                                if hf and r["tokens_per_cpu_s"] and hf["tokens_per_cpu_s"] else None)
    return rows


def add_batch_speedups(rows: list[dict]) -> None:
    """`speedup_vs_smallest_batch`: tokens/s over the same backend's at the smallest batch size measured."""
    for backend in {r["backend"] for r in rows}:
        mine = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["batch_size"])
        for r in mine:
            r["speedup_vs_smallest_batch"] = round(r["tokens_per_s"] / mine[0]["tokens_per_s"], 3)


def format_table(rows: list[dict]) -> str:
    lines = [
        "| backend | batch (prompts) | sequences | tokens/s | x fp32 (same round) | x hf (same round) | tokens/CPU-s "
        "| x hf per CPU-s | x smallest batch | mean new tokens | truncated |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (list(BACKENDS).index(r["backend"]), r["batch_size"])):
        ratio, hf, cpu = (f"{r[k]:.2f}" if r[k] is not None else "-" for k in ("ratio_vs_fp32", "ratio_vs_hf", "cpu_ratio_vs_hf"))
        lines.append(
            f"| {r['backend']} | {r['batch_size']} | {r['sequences_per_call']} | {r['tokens_per_s']:.1f} | {ratio} | {hf} "
            f"| {r['tokens_per_cpu_s']:.1f} | {cpu} | {r['speedup_vs_smallest_batch']:.2f} | {r['mean_new_tokens']} "
            f"| {r['truncated_fraction']:.0%} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded",
                   help="a local HF model directory, or `embedded` (the bundled SmolLM2-135M-Instruct; default)")
    p.add_argument("--backends", nargs="+", choices=list(BACKENDS), help="default: cpu-fp32 cpu-bf16, + cuda-* with a GPU")
    p.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    p.add_argument("--batch-sizes", type=int, nargs="+", help=f"prompts per call (default {GRID['batch_sizes']})")
    p.add_argument("--max-new-tokens", type=int, help=f"default {GRID['max_new_tokens']}")
    p.add_argument("--repeats", type=int, help=f"timed rounds per batch size (default {GRID['repeats']})")
    p.add_argument("--samples-per-prompt", type=int, default=4, help="as domain.sampling (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--prompts", default="dialogue_requests", help="a registered prompt source (default %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core box two OpenMP threads stall, STACK.md)")
    p.add_argument("--vllm-python", default="",
                   help="vLLM's environment's interpreter (default: $SKILLWEAVE_VLLM_PYTHON, else .venv-vllm)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    args = p.parse_args(argv)
    fill_preset(args, QUICK, GRID)
    args.vllm_python = vllm_python(args.vllm_python)
    args.backends = args.backends or default_backends(args.vllm_python is not None)
    if any(BACKENDS[b][0] == "cuda" for b in args.backends) and not torch.cuda.is_available():
        p.error("a cuda backend: torch sees no CUDA device")
    if any(b.startswith("vllm-") for b in args.backends) and args.vllm_python is None:
        p.error("a vllm backend: no vLLM environment (`make vllm`, or --vllm-python)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_plugins()  # the prompt sources are the domains' plugins
    torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir(args.model)
    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"  # as the generate stage: decoder-only batches pad on the left
    sampling = SamplingConfig(
        num_prompts=max(args.batch_sizes), samples_per_prompt=args.samples_per_prompt, temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, batch_size=max(args.batch_sizes), seed=0,
    )
    prompts = PROMPT_SOURCES.get(args.prompts)(n=max(args.batch_sizes), seed=0)
    longest = max(len(tok(chat_prompt(tok, p["prompt"]), add_special_tokens=False)["input_ids"]) for p in prompts)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    models, engine_start_s = {}, {}
    with ExitStack() as engines:
        for name in args.backends:
            device, dtype = BACKENDS[name]
            if name.startswith("vllm-"):
                t0 = time.perf_counter()
                models[name] = engines.enter_context(VLLMEngine(
                    model_dir, python=args.vllm_python, dtype=str(dtype).removeprefix("torch."), seed=0,
                    max_model_len=longest + args.max_new_tokens, threads=args.threads,
                    log_path=cache_dir() / "logs" / f"bench-generate-{name}.log",
                ))
                engine_start_s[name] = round(time.perf_counter() - t0, 1)
            else:
                models[name] = load_model(model_dir, dtype=dtype).to(device)
        rows = []
        for batch_size in args.batch_sizes:
            rows += bench_batch_size(models, tok, prompts, batch_size, sampling, args.repeats)
        vllm_version = next((m.version for m in models.values() if isinstance(m, VLLMEngine)), None)
    add_batch_speedups(rows)
    result = {
        "command": " ".join(["python", "bench/generate.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device_name": device_name({BACKENDS[b][0] for b in args.backends}),
        "torch": torch.__version__,
        "vllm": vllm_version,
        "engine_start_s": engine_start_s,
        "threads": torch.get_num_threads(),
        "model": str(model_dir) if args.model != "embedded" else "embedded (SmolLM2-135M-Instruct)",
        "prompt_source": args.prompts,
        "samples_per_prompt": args.samples_per_prompt,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "repeats": args.repeats,
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(format_table(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
