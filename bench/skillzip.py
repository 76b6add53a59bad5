"""Latency and bytes of a skillpack beside a backbone linear: is the integer path worth it, and where?

For each hidden size, the layer is a two-linear stack of a Llama-style block without bias: the
attention q_proj (hidden -> hidden) and an MLP up projection (hidden -> 4 * hidden), both fed the same
activations. Variants, all timed on that stack:

- backbone: dense fp32 nn.Linear (the reference every ratio divides by); bf16 backbone: the same
  weights in bf16.
- fp low-rank: `SkillpackLinear` with the fp path, base(x) + (x B^T) A^T in fp32.
- int path: `SkillpackLinear(int_mm=True)`, the INT8 path (torch._int_mm) of skillweave.zip.
- merged: one dense fp32 linear holding W + A B (same cost as the backbone by construction).

Every variant of one (hidden, tokens) group is timed back to back in each round, the order rotated
from round to round, and each ratio is the median over rounds of (variant / backbone) within the
round: a burst of contention from another process hits both sides of a ratio. Absolute times on a
shared machine are not facts; the ratios are what to compare. Merged and bf16 do not depend on the
rank and are timed once per group (the merged weight holds the largest rank's delta).

    python bench/skillzip.py                 # the default grid (a few minutes on 1 CPU thread)
    python bench/skillzip.py --quick         # one small shape, seconds
    python bench/skillzip.py --device cuda --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from skillweave.core.artifacts import atomic_write_json
from skillweave.zip.format import QuantizedFactors, Skillpack, skillpack_nbytes
from skillweave.zip.kernels import SkillpackLinear, _int_mm_accepts, int8_units
from skillweave.zip.quant import pack_int4, quantize_per_channel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, fill_preset  # noqa: E402  (bench/common.py)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "skillzip.json"
GRID = {
    "hidden": [576, 960, 2048, 4096],
    "ranks": [16, 32, 64, 128],
    "tokens": [1, 16, 64, 256],
    "repeats": 11,
}
QUICK = {"hidden": [576], "ranks": [16], "tokens": [1, 64], "repeats": 3}
MLP_RATIO = 4
WARMUP_CALLS = 2
ROUND_TARGET_MS = 50.0
"""Each variant is called in a loop long enough that the backbone takes about this long per round,
so that timer resolution and per-call jitter vanish at small shapes."""
BYTE_FIELDS = ("fp16_dense_delta_bytes", "fp16_factors_bytes", "int8_skillpack_bytes", "int4_skillpack_bytes")


def layer_shapes(hidden: int) -> dict[str, tuple[int, int]]:
    """(out, in) of the benchmarked stack: q_proj and an MLP up projection."""
    return {"q_proj": (hidden, hidden), "up_proj": (MLP_RATIO * hidden, hidden)}


def linears(
    shapes: dict[str, tuple[int, int]], device: torch.device, dtype: torch.dtype = torch.float32
) -> dict[str, nn.Linear]:
    """Bias-free linears of the given (out, in) shapes, as in Llama-family blocks."""
    return {name: nn.Linear(i, o, bias=False, device=device, dtype=dtype) for name, (o, i) in shapes.items()}


def random_factors(out_features: int, in_features: int, rank: int, bits: int) -> QuantizedFactors:
    """Skillpack factors of a random rank-`rank` residual, quantized by the library's own functions.

    `compress_factors` would get the same dtypes and shapes from an SVD of a dense random residual,
    but that SVD costs ~70 s per rank for a 16384 x 4096 layer on this CPU, and the values do not
    change the cost of any path timed here (tests/test_bench.py checks the layout matches).
    A and B are Gaussian, scaled so that the entries of A B have std 1/sqrt(in), like nn.Linear's init.
    """
    a = torch.randn(out_features, rank) / rank**0.25
    b = torch.randn(rank, in_features) / (rank**0.25 * in_features**0.5)
    a_q, a_scale = quantize_per_channel(a, bits, dim=0)
    b_q, b_scale = quantize_per_channel(b, bits, dim=0)
    if bits == 4:
        a_q, b_q = pack_int4(a_q), pack_int4(b_q)
    return QuantizedFactors(a_q, a_scale, b_q, b_scale, in_features, bits)


def stack_nbytes(
    factors8: dict[str, QuantizedFactors], factors4: dict[str, QuantizedFactors]
) -> dict[str, int]:
    """Bytes of the stack's delta stored four ways: dense fp16, fp16 factors, INT8 and INT4 skillpacks
    (factors + scales, counted by `skillpack_nbytes`)."""

    def pack(factors: dict[str, QuantizedFactors], bits: int) -> Skillpack:
        rank = max(f.rank for f in factors.values())
        return Skillpack("bench", "random", rank, bits, factors, dense={})

    return {
        "fp16_dense_delta_bytes": sum(2 * f.out_features * f.in_features for f in factors8.values()),
        "fp16_factors_bytes": sum(2 * f.rank * (f.out_features + f.in_features) for f in factors8.values()),
        "int8_skillpack_bytes": skillpack_nbytes(pack(factors8, 8)),
        "int4_skillpack_bytes": skillpack_nbytes(pack(factors4, 4)),
    }


def time_calls(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Milliseconds per call of `fn`, over `calls` calls in a row.

    On CUDA, events on the current stream time the GPU's span from the first launch to the last
    kernel's end, launch gaps included (they are real latency at small shapes); on CPU, perf_counter.
    """
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def time_interleaved(
    variants: dict[str, Callable[[], object]], reference: str, repeats: int, device: torch.device
) -> tuple[float, dict[str, float]]:
    """Median ms per call of `reference`, and per variant the median over rounds of its time divided by
    the reference's time in the same round. Every variant is warmed up first; each round runs them all,
    starting at a different one each time so that no variant always holds the same place in the round."""
    for fn in variants.values():
        for _ in range(WARMUP_CALLS):
            fn()
    calls = max(1, math.ceil(ROUND_TARGET_MS / time_calls(variants[reference], 1, device)))
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(time_calls(variants[name], calls, device))
    ref = times[reference]
    ratios = {name: statistics.median(t / b for t, b in zip(ts, ref)) for name, ts in times.items()}
    return statistics.median(ref), ratios


def stack(layers: dict[str, nn.Module]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The stack as one call: every layer applied to the same activations."""
    modules = list(layers.values())
    return lambda x: [m(x) for m in modules]


def bench_hidden(
    hidden: int, ranks: list[int], tokens: list[int], repeats: int, device: torch.device
) -> list[dict]:
    """Rows for one hidden size: every (rank, tokens) pair, ratios against the fp32 backbone."""
    shapes = layer_shapes(hidden)
    base, merged, bf16 = linears(shapes, device), linears(shapes, device), linears(shapes, device, torch.bfloat16)
    factors = {
        r: {
            bits: {name: random_factors(o, i, r, bits) for name, (o, i) in shapes.items()} for bits in (8, 4)
        }
        for r in ranks
    }
    with torch.no_grad():
        for name, m in merged.items():
            f = factors[max(ranks)][8][name]
            m.weight.copy_(base[name].weight + f.a().to(device) @ f.b().to(device))
            bf16[name].weight.copy_(base[name].weight)
    variants = {"backbone": stack(base), "bf16": stack(bf16), "merged": stack(merged)}
    for r in ranks:
        f8 = factors[r][8]
        variants[f"fp_{r}"] = stack({n: SkillpackLinear(base[n], f8[n]) for n in shapes})
        variants[f"int_{r}"] = stack({n: SkillpackLinear(base[n], f8[n], int_mm=True) for n in shapes})

    rows = []
    for t in tokens:
        x = torch.randn(t, hidden, device=device)
        x16 = x.to(torch.bfloat16)
        calls = {
            name: (lambda fn=fn, inp=(x16 if name == "bf16" else x): fn(inp)) for name, fn in variants.items()
        }
        backbone_ms, ratio = time_interleaved(calls, "backbone", repeats, device)
        for r in ranks:
            int_taken = all(
                _int_mm_accepts(t, i, r, device) and _int_mm_accepts(t, r, o, device)
                for o, i in shapes.values()
            )
            rows.append(
                {
                    "device": device.type,
                    "hidden": hidden,
                    "rank": r,
                    "tokens": t,
                    "backbone_ms": backbone_ms,
                    "bf16_backbone_ratio": ratio["bf16"],
                    "fp_lowrank_ratio": ratio[f"fp_{r}"],
                    "int_path_ratio": ratio[f"int_{r}"],
                    "merged_ratio": ratio["merged"],
                    "int_path_kernel": ("int_mm" if int8_units(device.type) else "int8_mm_fp32") if int_taken else "fp_fallback",
                    **stack_nbytes(factors[r][8], factors[r][4]),
                }
            )
        print(f"  hidden {hidden} tokens {t}: backbone {backbone_ms:.3f} ms", file=sys.stderr, flush=True)
    return rows


def format_tables(rows: list[dict]) -> str:
    """Two markdown tables: ratios per (hidden, rank, tokens), and bytes per (hidden, rank)."""
    lines = [
        "| hidden | rank | tokens | backbone ms | bf16 | fp low-rank | int path | merged | int kernel |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["hidden"], r["rank"], r["tokens"])):
        lines.append(
            f"| {r['hidden']} | {r['rank']} | {r['tokens']} | {r['backbone_ms']:.3f} "
            f"| {r['bf16_backbone_ratio']:.2f} | {r['fp_lowrank_ratio']:.2f} | {r['int_path_ratio']:.2f} "
            f"| {r['merged_ratio']:.2f} | {r['int_path_kernel']} |"
        )
    lines += [
        "",
        "| hidden | rank | fp16 dense delta KiB | fp16 factors KiB | INT8 skillpack KiB | INT4 skillpack KiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    seen = set()
    for r in sorted(rows, key=lambda r: (r["hidden"], r["rank"])):
        if (r["hidden"], r["rank"]) in seen:
            continue
        seen.add((r["hidden"], r["rank"]))
        kib = " | ".join(f"{r[k] / 1024:,.0f}" for k in BYTE_FIELDS)
        lines.append(f"| {r['hidden']} | {r['rank']} | {kib} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: with 2 threads on a shared 2-core box OpenMP stalls, STACK.md)",
    )
    p.add_argument("--quick", action="store_true", help=f"one small shape, few repeats: {QUICK}")
    p.add_argument("--hidden", type=int, nargs="+", help=f"hidden sizes (default {GRID['hidden']})")
    p.add_argument("--ranks", type=int, nargs="+", help=f"skillpack ranks (default {GRID['ranks']})")
    p.add_argument("--tokens", type=int, nargs="+", help=f"tokens per call (default {GRID['tokens']})")
    p.add_argument("--repeats", type=int, help=f"interleaved rounds (default {GRID['repeats']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    args = p.parse_args(argv)
    fill_preset(args, QUICK, GRID)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    load_before = os.getloadavg()[0]
    rows = []
    with torch.inference_mode():
        for hidden in args.hidden:
            rows += bench_hidden(hidden, args.ranks, args.tokens, args.repeats, device)
    result = {
        "command": " ".join(["python", "bench/skillzip.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device_name": device_name({device.type}),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "stack": {"q_proj": "hidden -> hidden", "up_proj": f"hidden -> {MLP_RATIO} * hidden"},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(format_tables(rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
