"""Compiled decoding for Hugging Face generation: a static KV cache and `torch.compile` of the decode step.

Why: a decode step of a small model on CPU is mostly per-op dispatch, and a skillpack's integer path
adds ~27 small ops per layer (quantize, amax, round, two int8 GEMMs, dequantize). transformers compiles
the decode step itself when the cache is static (`cache_implementation="static"` + `compile_config`;
on CPU only with `_compile_all_devices`); its prefill stays eager. Inductor fuses each layer's
quantize ops into a few C++ loops around the two GEMMs (bench/README.md, "decode.py").

A compiled graph is specialised to its shapes (`dynamic=False`: symbolic shapes cost speed and add
guards), so callers keep them few: a short last greedy batch is padded to the full batch (`pad_rows`;
sampling is not padded, as padding rows would draw random numbers too), and the static cache's length
is rounded up to a multiple of `CACHE_BUCKET` (transformers then keeps the longest cache a model has
used, so later shorter batches reuse it). One run compiles once per (model, rows, bucket);
inductor's on-disk cache (`TORCHINDUCTOR_CACHE_DIR`, by default `inductor_cache_dir()`) turns the
next process's compile of the same graph into seconds.

Where inductor cannot build (no C++ compiler, an op it does not lower) the first compiled call raises;
`generate` logs one line and decodes that call, and every later one in the process, eagerly.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from .config import CompiledDecode
from .models import cache_dir

log = logging.getLogger(__name__)

CACHE_BUCKET = 64
"""Static cache lengths are multiples of this many tokens. A compiled step attends over the whole
static cache, empty slots included: at batch 32 on SmolLM2 (contended, 1 thread) attention over 256
slots took 3.3 ms a layer against 1.3 over 96, ~60 ms of a ~290 ms step, so the buckets are kept
small; transformers keeps the longest cache a model has used, so a run meets only a few of them."""
AUTO_MIN_STEPS = 8192
"""`auto` compiles when a call site plans at least this many decode steps (batches x new tokens).
Measured on SmolLM2-135M, 1 thread, a contended 2-core CPU (bench/README.md, decode.py): one
compile costs 40-160 s per model and shape from a cold inductor cache and 5-50 s from a warm one
(trace and cache load); it saves 17-29% of a step (20-45 ms) with a skillpack's integer path
attached, 10-20% for the bf16 backbone at batch 1-8, and 2-10% (1-6 ms) for the fp32 backbone
alone. At 8192 steps the first two repay even a cold compile; the fp32 backbone breaks even cold and
gains warm. The default eval (20 docs a task, batch 8, 256 tokens: 768 steps) stays eager; a 300-doc
task (~9.7k steps) compiles."""
RECOMPILE_LIMIT = 64
"""torch._dynamo's limit of graphs per function (default 8) is raised to this: an eval compiles one
graph per model, attached skillpack and batch shape, and past the limit dynamo decodes eagerly
without saying so in the results."""

_failure: str | None = None
"""Why compiled decoding failed in this process (None: it has not): every later call decodes eagerly."""


def inductor_cache_dir() -> Path:
    """Where compiled kernels are kept between runs unless TORCHINDUCTOR_CACHE_DIR says otherwise."""
    return cache_dir() / "inductor"


def use_inductor_cache_dir() -> None:
    """Point inductor's caches at `inductor_cache_dir()` unless TORCHINDUCTOR_CACHE_DIR was chosen.

    Importing a transformers model already makes torch fill the variable in with its default
    (/tmp/torchinductor_<user>, which a reboot empties); that default is replaced too. Inductor reads
    the variable whenever it looks a compiled graph or kernel up, so this holds for every later compile.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, os.path.abspath(default_cache_dir())):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())


def unavailable(device: torch.device) -> str | None:
    """Why the decode step cannot be compiled on `device`, or None when it can (as far as can be
    told without compiling: a missing C++ compiler for inductor's CPU backend, another device type,
    or an earlier failure in this process)."""
    if _failure is not None:
        return _failure
    if device.type == "cuda":
        return None
    if device.type != "cpu":
        return f"no inductor backend for device {device.type}"
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler, or an OSError probing the candidates
        return f"inductor finds no C++ compiler ({_cause(e)})"
    return None


def use_compiled_decode(setting: str | CompiledDecode, device: torch.device, steps: int) -> bool:
    """Whether to decode compiled under `setting` (model.compiled_decode), for a call site that will
    decode about `steps` steps (batches x new tokens) on `device`.

    `on` compiles wherever inductor can build; `auto` also needs `steps >= AUTO_MIN_STEPS` (the
    compile must pay for itself); `off` never compiles. `on` on a machine that cannot compile logs
    one warning and decodes eagerly.
    """
    setting = CompiledDecode(setting)
    if setting == CompiledDecode.off:
        return False
    reason = unavailable(device)
    if reason is not None:
        if setting == CompiledDecode.on:
            _warn_once(reason)
        return False
    return setting == CompiledDecode.on or steps >= AUTO_MIN_STEPS


def pad_rows(inputs: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """`inputs` (input_ids, attention_mask, ...: batch first) with the last row repeated up to `rows`
    rows, so that a short last batch runs the full batch's compiled graph. A repeated row decodes
    what its original decodes, and stops when it stops."""
    n = next(iter(inputs.values())).shape[0]
    if n >= rows:
        return inputs
    return {k: torch.cat([t, t[-1:].expand(rows - n, *t.shape[1:])]) for k, t in inputs.items()}


def compile_config():
    """transformers' CompileConfig for the decode step: static shapes, whole graph, and CPU allowed."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True, dynamic=False)
    config._compile_all_devices = True  # transformers compiles on CUDA only unless told
    return config


def static_cache_kwargs(total_length: int) -> dict:
    """generate() kwargs that decode compiled with a static cache of at least `total_length` tokens
    (prompt + new tokens), rounded up to a multiple of CACHE_BUCKET."""
    use_inductor_cache_dir()
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return {
        "cache_implementation": "static",
        "compile_config": compile_config(),
        "max_cache_len": CACHE_BUCKET * math.ceil(total_length / CACHE_BUCKET),
    }


def generate(
    run: Callable[..., torch.Tensor],
    inputs: dict[str, torch.Tensor],
    *,
    compiled: bool,
    rows: int,
    total_length: int,
    sequences_per_row: int = 1,
) -> torch.Tensor:
    """`run(inputs, **extra)` (a call of model.generate), compiled when `compiled`, else as is.

    Compiled, the batch is padded to `rows` rows and `extra` asks for a static cache of
    `total_length` tokens (prompt + new tokens, bucketed) and the compiled decode step; the padding
    rows' sequences are dropped from the result (`sequences_per_row` each: num_return_sequences).
    If the compile fails, one warning says why and the call is redone eagerly with the random
    state it started with (sampling draws the same numbers); later calls skip the compile.
    """
    global _failure
    if compiled and _failure is None:
        n = next(iter(inputs.values())).shape[0]
        rng = _rng_state()
        try:
            with _gqa_in_sdpa():
                out = run(pad_rows(inputs, rows), **static_cache_kwargs(total_length))
            return out[: n * sequences_per_row]
        except _compile_errors() as e:
            _failure = f"compiled decoding failed ({_cause(e)})"
            _warn_once(_failure)
            _set_rng_state(rng)
    return run(inputs)


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@contextmanager
def _gqa_in_sdpa():
    """Grouped-query attention inside SDPA (`enable_gqa`) while the compiled decode runs.

    transformers' sdpa_attention_forward decodes eagerly without repeating the KV heads, but when
    dynamo traces it, it repeats them (`repeat_kv`) unless TRANSFORMERS_SDPA_FORCE_GQA is set: over a
    static cache that copies every layer's whole cache each step. SmolLM2 (3 KV heads, 9 query heads),
    batch 32, 256 cache slots: 35 ms per layer against 3.3 with enable_gqa (same values), which made
    the compiled batch-32 step 2.1x the eager one. Scoped to the compiled call so that eager decoding
    elsewhere in the process keeps transformers' own choice.
    """
    key = "TRANSFORMERS_SDPA_FORCE_GQA"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


def _compile_errors() -> tuple[type[BaseException], ...]:
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    return TorchDynamoException, InvalidCxxCompiler, CppCompileError


def _cause(e: BaseException) -> str:
    """`Type: first line` of what went wrong, on one line (dynamo wraps a backend's error in
    BackendCompilerFailed, whose own first line only names the backend)."""
    e = getattr(e, "inner_exception", None) or e
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


_warned: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        log.warning("%s: decoding eagerly (model.compiled_decode=off silences this)", reason)
