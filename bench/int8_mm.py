"""The integer path's two GEMMs by kernel: torch._int_mm against `int8_mm`'s fp32 emulation (same integers).

`skillweave.zip.kernels.int8_mm` computes an int8 x int8 -> int32 product with torch._int_mm where the
device has int8 dot-product units (`int8_units`: CUDA, a CPU with VNNI or AMX) and with fp32 GEMMs over
chunks of k otherwise. This times both kernels on a skillpack's products (a (tokens x k) activation by a
(k x n) factor: k x 16 for B, 16 x n for A, at the SmolLM2-135M widths 576 and 1536) whatever the CPU has,
so that the choice can be checked on any machine; every product is also checked equal to the int64 one.
Each round calls both kernels of a shape back to back, the order swapped each round; a ratio is the median
over rounds of fp32 emulation / _int_mm in the same round.

    python bench/int8_mm.py                  # tokens 1 2 4 8 32, 25 rounds -> bench/results/int8_mm.json
    python bench/int8_mm.py --quick          # tokens 1 and 8, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from skillweave.core.artifacts import atomic_write_json
from skillweave.zip.kernels import _blas_operand, int8_mm, int8_mm_operand, int8_units

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, fill_preset  # noqa: E402  (bench/common.py)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "int8_mm.json"
SHAPES = [(576, 16), (16, 576), (1536, 16), (16, 1536)]  # (k, n): B's product, then A's, per width
QUICK = {"tokens": [1, 8], "repeats": 3, "calls": 20}
GRID = {"tokens": [1, 2, 4, 8, 32], "repeats": 25, "calls": 50}


def _time(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []
    for k, n in SHAPES:
        b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
        b_float = int8_mm_operand(b, units=False)
        for m in args.tokens:
            a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
            want = (a.long() @ b.long()).int()
            kernels = {"int_mm": lambda: torch._int_mm(_blas_operand(a), b),
                       "fp32": lambda: int8_mm(a, b_float)}
            equal = all(torch.equal(fn(), want) for fn in kernels.values())
            per_round = {name: [] for name in kernels}
            for name, fn in kernels.items():  # warm-up
                _time(fn, 3)
            for i in range(args.repeats):
                for name in (list(kernels) if i % 2 == 0 else list(reversed(kernels))):
                    per_round[name].append(_time(kernels[name], args.calls))
            rows.append({
                "k": k, "n": n, "tokens": m, "equal": equal,
                "int_mm_us": statistics.median(per_round["int_mm"]),
                "fp32_us": statistics.median(per_round["fp32"]),
                "ratio_fp32_vs_int_mm": statistics.median(f / i for f, i in zip(per_round["fp32"], per_round["int_mm"])),
            })
            r = rows[-1]
            print(f"  {m:>3} x {k:>4} @ {k:>4} x {n:<4}: int_mm {r['int_mm_us']:.1f} us, fp32 {r['fp32_us']:.1f} us", flush=True)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    p.add_argument("--tokens", type=int, nargs="+", help=f"rows of the activation (default {GRID['tokens']})")
    p.add_argument("--repeats", type=int, help=f"rounds (default {GRID['repeats']})")
    p.add_argument("--calls", type=int, help=f"calls timed per kernel and round (default {GRID['calls']})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    args = p.parse_args(argv)
    fill_preset(args, QUICK, GRID)
    load_start = os.getloadavg()[0]
    result = {
        "command": " ".join(["python", "bench/int8_mm.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device_name": device_name(),
        "int8_units": int8_units("cpu"),
        "chosen": "int_mm" if int8_units("cpu") else "fp32",
        "torch": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
    } | run(args)
    result["load_average_1min"] = [load_start, os.getloadavg()[0]]  # another process's load shows here
    print("\n| tokens | k x n | torch._int_mm us | int8_mm fp32 us | fp32 / _int_mm (same round) | equal |")
    print("|---:|---|---:|---:|---:|---|")
    for r in result["rows"]:
        print(f"| {r['tokens']} | {r['k']} x {r['n']} | {r['int_mm_us']:.1f} | {r['fp32_us']:.1f} "
              f"| {r['ratio_fp32_vs_int_mm']:.2f} | {'yes' if r['equal'] else 'NO'} |")
    print(f"\nint8 units (VNNI/AMX): {result['int8_units']}; int8_mm uses {result['chosen']} on this CPU")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
