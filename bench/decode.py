"""Whole-model decode with an attached skillpack: ms per decode step and tokens/s, eager and compiled.

The model is the embedded SmolLM2-135M-Instruct (fp32, as the eval stage loads it) with one random
INT8 rank-16 skillpack attached by `attach_skillpack`: factors on every linear of the decoder blocks
(with smoothing scales) and rank-8 factors on the tied embedding, so the output head carries a delta
too, as the zip stage makes them. The factors come from bench/skillzip.py's `random_factors` (laid out
as `compress_factors` lays them out), scaled so that each layer's delta is ~2% of its weight (a real
residual's order, so the greedy text stays the model's). Variants:

| variant | what decodes | ratio column divides by |
|---|---|---|
| backbone | fp32 model, transformers' eager loop with its dynamic cache (today's path) | itself |
| int | + skillpack, integer path (`SkillpackLinear(int_mm=True)`, eval.integer_path) | backbone |
| fp | + skillpack, fp path (dequantized factors) | backbone |
| bf16 | the backbone in bf16 (the generate stage's dtype on this CPU) | backbone |
| compiled | backbone through skillweave.decoding: static cache, compiled decode step | backbone |
| compiled_int, compiled_fp | the skillpack variants, compiled | compiled |
| compiled_bf16 (with --variants) | the bf16 backbone, compiled | bf16 |
| vllm | the fp32 backbone served by a vLLM engine (its own process, `--vllm-python`) | backbone |
| vllm_lora | + the skillpack exported as a LoRA adapter (its fp path, as `eval.backend=vllm` serves it) | vllm |

vLLM's rows come from one engine started with LoRA enabled (`vllm` requests carry no adapter): the
serving setup of an eval that mixes the two. It has no per-step clock: a call's step time is the time
of a call of exactly `--new-tokens` tokens less that of a one-token call (the prefill), over the
steps between, so the engine's scheduling and the pipe are in it, as they are in a served eval. The
vLLM rows are in the default variants where vLLM's environment exists (`make vllm`), but not with
--quick (its model's 16-wide attention heads are below vLLM's CPU kernels' 32).

Each call is one greedy `generate` of exactly `--new-tokens` tokens (min_new_tokens) after a prompt
of `--prompt-tokens` random token ids, run through `skillweave.decoding.generate` (the library's own
compiled path, with its padding and cache buckets). A logits processor stamps the clock once per
step; a call's step time is the median gap between stamps, so the prefill is left out. Per batch size,
every variant is called once to warm up (that call holds the compile: `first call s`), then in
`--repeats` rounds, the order rotated each round; each ratio is the median over rounds of the
variant's step time over its reference's in the same round, so contention that comes and goes hits
both sides. Absolute times on a shared machine are not facts; the ratios are.

The roofline line: a step must at least read every weight once (and the KV cache: the actual length
eager, the static cache's bucketed length compiled); `floor ms` is those bytes over the memory
bandwidth measured here by reading a 512 MiB tensor, `x floor` the measured step over it.

    python bench/decode.py                  # SmolLM2-135M, batch 1 8 32: ~10 min with a warm inductor cache
    python bench/decode.py --quick          # a tiny random Llama, batch 1 and 2: about a minute
    python bench/decode.py --batch-sizes 1 --variants backbone compiled compiled_int --repeats 9
    python bench/decode.py --variants backbone fp vllm vllm_lora     # vLLM base and LoRA beside HF
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from skillweave import decoding
from skillweave.core.artifacts import atomic_write_json
from skillweave.engines import VLLMEngine, vllm_python
from skillweave.models import load_model, resolve_model_dir
from skillweave.zip import attach_skillpack
from skillweave.zip.export import export_skillpack, lora_rank
from skillweave.zip.format import Skillpack
from skillweave.zip.kernels import SkillpackEmbedding, SkillpackLinear

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, fill_preset  # noqa: E402
from skillzip import random_factors  # noqa: E402  (bench/skillzip.py: the layer benchmark's own factors)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "decode.json"
GRID = {"batch_sizes": [1, 8, 32], "new_tokens": 12, "prompt_tokens": 32, "repeats": 7}
QUICK = {"batch_sizes": [1, 2], "new_tokens": 8, "prompt_tokens": 16, "repeats": 2}
VARIANTS = {
    # name: (model, path, reference variant of the ratio)
    "backbone": ("fp32", "eager", "backbone"),
    "int": ("int", "eager", "backbone"),
    "fp": ("fp", "eager", "backbone"),
    "bf16": ("bf16", "eager", "backbone"),
    "compiled": ("fp32", "compiled", "backbone"),
    "compiled_int": ("int", "compiled", "compiled"),
    "compiled_fp": ("fp", "compiled", "compiled"),
    "compiled_bf16": ("bf16", "compiled", "bf16"),
    "vllm": ("fp32", "vllm", "backbone"),
    "vllm_lora": ("fp", "vllm", "vllm"),
}
HF_VARIANTS = [v for v, (_, path, _) in VARIANTS.items() if path != "vllm" and v != "compiled_bf16"]
VLLM_VARIANTS = ["vllm", "vllm_lora"]
RANK, EMBEDDING_RANK = 16, 8
DELTA_SCALE = 0.02
"""Each layer's random delta is this share of its weight's typical entry (random_factors makes it as
large as nn.Linear's init)."""


class StepClock:
    """A logits processor that only records when it is called: once per step, after the forward."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.stamps.append(time.perf_counter())
        return scores

    def step_ms(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return 1e3 * statistics.median(gaps)


def tiny_model() -> nn.Module:
    """--quick's model: a 2-layer Llama with random weights and tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def random_skillpack(model: nn.Module, seed: int) -> Skillpack:
    """A skillpack of random factors for every block linear of `model` (rank RANK, smoothed) and its
    input embedding (rank EMBEDDING_RANK; with tied weights the head shares them)."""
    torch.manual_seed(seed)
    factors = {}
    for name, m in model.named_modules():
        if name.startswith("model.layers.") and isinstance(m, nn.Linear):
            f = random_factors(m.out_features, m.in_features, RANK, 8)
            f.a_scale *= DELTA_SCALE
            f.smooth = torch.rand(m.in_features) + 0.5
            factors[name] = f
    embedding = model.get_input_embeddings()
    f = random_factors(embedding.num_embeddings, embedding.embedding_dim, EMBEDDING_RANK, 8)
    f.a_scale *= DELTA_SCALE
    factors["model.embed_tokens"] = f
    tied = model.get_output_embeddings().weight is embedding.weight
    return Skillpack("bench", "random", RANK, 8, factors, dense={}, tied_embeddings=tied)


class VLLMVariants:
    """The vLLM variants' engine (fp32, LoRA enabled) on the backbone, and the skillpack as its adapter."""

    def __init__(self, stack: ExitStack, backbone: nn.Module, args) -> None:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="decode-bench-")))
        backbone.save_pretrained(work / "backbone")  # the --quick model lives in memory only
        skillpack = random_skillpack(backbone, args.seed)  # the attached variants' factors (same seed)
        self.adapter = work / "skillpack"
        export_skillpack(skillpack, self.adapter, str(work / "backbone"))
        t0 = time.perf_counter()
        self.engine = stack.enter_context(VLLMEngine(
            work / "backbone", python=args.vllm_python, dtype="float32", seed=0,
            max_model_len=args.prompt_tokens + args.new_tokens + 8, log_path=work / "vllm.log", threads=args.threads,
            max_lora_rank=lora_rank(skillpack)))
        self.start_s = time.perf_counter() - t0

    def decode(self, variant: str, inputs: dict[str, torch.Tensor], new_tokens: int) -> tuple[float, torch.Tensor]:
        """(ms per decode step, generated ids): a call of `new_tokens` tokens less a one-token call, per step."""
        prompts = inputs["input_ids"].tolist()
        lora = self.adapter if variant == "vllm_lora" else None
        seconds, outputs = {}, {}
        for n in (1, new_tokens):
            t0 = time.perf_counter()
            outputs[n] = self.engine.generate(prompts, n=1, greedy=True, temperature=1.0, top_p=1.0, max_new_tokens=n,
                                              min_new_tokens=n, stop_token_ids=[0], seed=0, lora=lora)
            seconds[n] = time.perf_counter() - t0
        ms = 1e3 * (seconds[new_tokens] - seconds[1]) / (new_tokens - 1)
        return ms, torch.tensor([o.ids for (o,) in outputs[new_tokens]])


def build_models(model_dir: Path | None, names: set[str], seed: int) -> dict[str, nn.Module]:
    """The models the variants need: fp32, bf16, and fp32 copies with the skillpack attached."""
    def load(dtype: torch.dtype) -> nn.Module:
        model = tiny_model() if model_dir is None else load_model(model_dir)
        return model.to(dtype)

    models = {}
    for name in names:
        models[name] = load(torch.bfloat16 if name == "bf16" else torch.float32)
        if name in ("int", "fp"):
            attach_skillpack(models[name], random_skillpack(models[name], seed), int_mm=name == "int")
    return models


def bytes_per_step(model: nn.Module, int_path: bool) -> int:
    """Bytes of weights a decode step reads: every parameter once (a tied head and embedding are one
    tensor) plus the skillpack factors its path reads."""
    total = sum({p.data_ptr(): p.nbytes for p in model.parameters()}.values())
    for m in model.modules():
        if isinstance(m, SkillpackLinear):
            total += (m.a_op.nbytes + m.b_op.nbytes + m.out_scale.nbytes) if int_path else (m.a.nbytes + m.b.nbytes)
        elif isinstance(m, SkillpackEmbedding):
            total += m.b.nbytes
    return total


def kv_bytes(model: nn.Module, batch: int, length: int) -> int:
    """Bytes of the KV cache a step reads at `length` cached tokens."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * length * batch * model.dtype.itemsize


def memory_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """GB/s of reading a tensor far larger than the caches (a sum over it; median of `repeats`): how
    fast a decode step can stream its weights here."""
    src = torch.ones(mib * 2**20 // 4)
    src.sum()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        src.sum()
        times.append(time.perf_counter() - t0)
    return src.nbytes / statistics.median(times) / 1e9


def decode(model: nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int, compiled: bool) -> tuple[float, torch.Tensor]:
    """(ms per decode step, generated ids) of one greedy call of exactly `new_tokens` tokens."""
    from transformers import LogitsProcessorList

    clock = StepClock()
    batch, prompt = inputs["input_ids"].shape
    with torch.inference_mode():
        out = decoding.generate(
            lambda padded, **extra: model.generate(
                **padded, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                logits_processor=LogitsProcessorList([clock]), pad_token_id=0, **extra,
            ),
            inputs, compiled=compiled, rows=batch, total_length=prompt + new_tokens,
        )
    return clock.step_ms(), out[:, prompt:]


def bench_batch_size(models: dict[str, nn.Module], served: VLLMVariants | None, variants: list[str], batch: int, args,
                     bandwidth: float) -> list[dict]:
    """One row per variant at this batch size."""
    vocab = next(iter(models.values())).config.vocab_size
    g = torch.Generator().manual_seed(args.seed + batch)
    ids = torch.randint(3, vocab, (batch, args.prompt_tokens), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def call(name: str) -> tuple[float, torch.Tensor]:
        model, path, _ = VARIANTS[name]
        if path == "vllm":
            return served.decode(name, inputs, args.new_tokens)
        return decode(models[model], inputs, args.new_tokens, path == "compiled")

    first_s, tokens = {}, {}
    for name in variants:
        t0 = time.perf_counter()
        _, tokens[name] = call(name)
        first_s[name] = time.perf_counter() - t0
        if VARIANTS[name][1] == "compiled" and decoding.unavailable(torch.device("cpu")):
            sys.exit(f"bench/decode.py: {decoding.unavailable(torch.device('cpu'))}: the compiled variants cannot run here")
        print(f"  batch {batch} {name}: first call {first_s[name]:.1f} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name in variants[r % len(variants) :] + variants[: r % len(variants)]:
            times[name].append(call(name)[0])
    rows = []
    for name in variants:
        model_name, path, ref = VARIANTS[name]
        compiled = path == "compiled"
        model = models[model_name]
        ms = statistics.median(times[name])
        ratio = statistics.median(t / b for t, b in zip(times[name], times[ref])) if ref in times else None
        base = statistics.median(t / b for t, b in zip(times[name], times["backbone"])) if "backbone" in times else None
        # the cache a step reads: eager, the tokens so far (mean over the steps); compiled, the whole static cache
        length = (decoding.CACHE_BUCKET * -(-(args.prompt_tokens + args.new_tokens) // decoding.CACHE_BUCKET)
                  if compiled else args.prompt_tokens + args.new_tokens // 2)
        floor_ms = 1e3 * (bytes_per_step(model, model_name == "int") + kv_bytes(model, batch, length)) / (bandwidth * 1e9)
        eager_twin = next((v for v, (m, p, _) in VARIANTS.items() if m == model_name and p == "eager"), None)
        rows.append({
            "batch": batch,
            "variant": name,
            "path": path,
            "dtype": str(model.dtype).removeprefix("torch."),
            "ms_per_step": round(ms, 3),
            "tokens_per_s": round(1e3 * batch / ms, 1),
            "ratio_vs": ref,
            "ratio": round(ratio, 3) if ratio is not None else None,
            "ratio_vs_backbone": round(base, 3) if base is not None else None,
            "floor_ms": round(floor_ms, 4),
            "x_floor": round(ms / floor_ms, 2),
            "first_call_s": round(first_s[name], 1),
            "greedy_equal_eager": bool(torch.equal(tokens[name], tokens[eager_twin]))
            if path != "eager" and eager_twin in tokens else None,
            "step_ms_rounds": [round(t, 3) for t in times[name]],
        })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| batch | variant | ms/step | tokens/s | x same-path backbone | x fp32 eager backbone | floor ms | x floor | first call s | greedy = eager |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.3f} ({r['ratio_vs']})" if r["ratio"] is not None else "-"
        base = f"{r['ratio_vs_backbone']:.3f}" if r["ratio_vs_backbone"] is not None else "-"
        same = {True: "yes", False: "no", None: "-"}[r["greedy_equal_eager"]]
        lines.append(
            f"| {r['batch']} | {r['variant']} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:.1f} | {ratio} | {base} "
            f"| {r['floor_ms']:.2f} | {r['x_floor']:.2f} | {r['first_call_s']:.1f} | {same} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded",
                   help="a local HF model directory, or `embedded` (the bundled SmolLM2-135M-Instruct; default)")
    p.add_argument("--quick", action="store_true", help=f"a tiny random Llama and small sizes: {QUICK}")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   help="default: every variant but compiled_bf16; the vLLM ones where vLLM's environment exists, "
                        "without --quick")
    p.add_argument("--vllm-python", default="",
                   help="vLLM's environment's interpreter (default: $SKILLWEAVE_VLLM_PYTHON, else .venv-vllm)")
    p.add_argument("--batch-sizes", type=int, nargs="+", help=f"sequences per call (default {GRID['batch_sizes']})")
    p.add_argument("--new-tokens", type=int, help=f"decode steps per call (default {GRID['new_tokens']})")
    p.add_argument("--prompt-tokens", type=int, help=f"prompt length (default {GRID['prompt_tokens']})")
    p.add_argument("--repeats", type=int, help=f"timed rounds per batch size (default {GRID['repeats']})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared 2-core box two OpenMP threads stall, STACK.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    args = p.parse_args(argv)
    fill_preset(args, QUICK, GRID)
    args.vllm_python = vllm_python(args.vllm_python)
    if args.variants is None:
        args.variants = HF_VARIANTS + VLLM_VARIANTS * (args.vllm_python is not None and not args.quick)
    if any(VARIANTS[v][1] == "vllm" for v in args.variants) and args.vllm_python is None:
        p.error("--variants vllm*: no vLLM environment (`make vllm`, or --vllm-python)")
    if args.new_tokens < 3:
        p.error("--new-tokens must be >= 3: a step time is a gap between two decode steps")
    missing = {VARIANTS[v][2] for v in args.variants} - set(args.variants)
    if missing:
        p.error(f"--variants: the ratios need {', '.join(sorted(missing))} too")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    model_dir = None if args.quick else resolve_model_dir(args.model)
    vllm = any(VARIANTS[v][1] == "vllm" for v in args.variants)
    models = build_models(model_dir, {VARIANTS[v][0] for v in args.variants} | ({"fp32"} if vllm else set()), args.seed)
    bandwidth = memory_bandwidth()
    rows = []
    with ExitStack() as stack:
        served = VLLMVariants(stack, models["fp32"], args) if vllm else None
        for batch in args.batch_sizes:
            rows += bench_batch_size(models, served, args.variants, batch, args, bandwidth)
    bandwidth_end = memory_bandwidth()
    result = {
        "command": " ".join(["python", "bench/decode.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device_name": device_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": "tiny random Llama (--quick)" if args.quick else (
            "embedded (SmolLM2-135M-Instruct)" if args.model == "embedded" else str(model_dir)),
        "skillpack": {"rank": RANK, "embedding_rank": EMBEDDING_RANK, "bits": 8, "delta_scale": DELTA_SCALE},
        "new_tokens": args.new_tokens,
        "prompt_tokens": args.prompt_tokens,
        "repeats": args.repeats,
        "cache_bucket": decoding.CACHE_BUCKET,
        "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        "vllm": served.engine.version if served else None,
        "engine_start_s": round(served.start_s, 1) if served else None,
        "bandwidth_gb_s": [round(bandwidth, 1), round(bandwidth_end, 1)],
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(format_table(rows))
    print(f"\nmemory bandwidth (read): {bandwidth:.1f} GB/s at start, {bandwidth_end:.1f} at end")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
