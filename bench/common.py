"""What every benchmark script shares: the device line recorded beside its timings, and `--quick` / default
presets filling the settings not given on the command line. Imported by path (the scripts put bench/ on
sys.path), so a script still runs as `python bench/<name>.py`."""

from __future__ import annotations

import argparse
import os
import platform

import torch

from skillweave.models import native_bf16
from skillweave.zip.kernels import int8_units


def cpu_name() -> str:
    """The CPU's model name, its logical CPU count, whether bf16 is native there and whether it has int8 units."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    units = "int8 units" if int8_units("cpu") else "no int8 units"  # VNNI/AMX: torch._int_mm's speed (int8_mm.py)
    return f"{cpu}, {os.cpu_count()} logical CPUs, {'native' if native_bf16(cuda=False) else 'emulated'} bf16, {units}"


def device_name(devices: set[str] = frozenset({"cpu"})) -> str:
    """What the timings ran on, recorded in the JSON beside them: the CPU, and the GPU where one ran."""
    name = cpu_name()
    if "cuda" in devices:
        name += f"; {torch.cuda.get_device_name(0)}"
    return name


def fill_preset(args: argparse.Namespace, quick: dict, grid: dict) -> None:
    """Every setting left None on the command line takes `quick`'s value under --quick, else `grid`'s."""
    for key, value in (quick if args.quick else grid).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
