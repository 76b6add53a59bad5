"""Eval time of one configuration, HF against vLLM: skillweave.evaluation.evaluate on the same documents.

The eval stage's own call (`evaluate`, greedy, fp32, the tokenizer's chat template) on the base model:
`hf` is lm-eval's HFLM in this process (eval.backend=hf, `model.compiled_decode` as given), `vllm` the
same documents through a vLLM engine (eval.backend=vllm: skillweave.engines, lm-eval fed by
`eval_lms.engine_lm`) on as many threads. Each backend evaluates once per round, the order swapped
every round; `x hf` is the median over rounds of the vLLM eval's seconds over the HF eval's in the same
round. The engine's start (load, compile warm-up) is reported apart: the eval stage starts one per
configuration. Also printed: each backend's score ± stderr and how many answers are identical between
them (greedy in fp32 both, different kernels: near-ties may break differently), and the CPU seconds
each used (vLLM's: this process's and every engine process's, its polling scheduler included). The
engine stays up through the HF rounds, where its idle polling (~0.1 core here) competes with HF.

`--skillpack int|fp` attaches bench/decode.py's random INT8 skillpack (rank 16, the tied embedding at
rank 8) to the model: HF decodes it on that path (eval.integer_path true|false), vLLM serves its fp path
as `eval.backend=vllm` serves a skillweave row (`--served`, eval.vllm_adapters): the backbone with the
skillpack folded into its weights, or the backbone plus the skillpack exported as a LoRA adapter.

    python bench/eval.py                              # IFEval, 300 docs, 256 tokens, batch 8, 1 thread
    python bench/eval.py --quick                      # a tiny random Llama, 6 docs, 16 tokens
    python bench/eval.py --task skillweave_arith --limit 100
    python bench/eval.py --limit 60 --skillpack int   # a skillpack row: HF's integer path vs vLLM, folded
    python bench/eval.py --limit 60 --skillpack int --served lora   # ... vs vLLM + LoRA
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from skillweave.app import load_plugins
from skillweave.core.artifacts import atomic_write_json
from skillweave.engines import Served, VLLMEngine, adapter_deltas, fold_deltas, vllm_python
from skillweave.evaluation import evaluate
from skillweave.models import cache_dir, load_model, load_tokenizer, resolve_model_dir
from skillweave.zip import attach_skillpack, backbone_modules
from skillweave.zip.export import export_skillpack, lora_rank

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import random_skillpack  # noqa: E402  (bench/decode.py: the decode benchmark's skillpack)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "eval.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="a local HF model directory, or `embedded` (default)")
    p.add_argument("--task", default="skillweave_ifeval")
    p.add_argument("--limit", type=int, default=300, help="documents (a seeded subset, as eval.limit)")
    p.add_argument("--max-gen-toks", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="HF's batch (eval.batch_size); vLLM schedules its own")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compiled-decode", default="auto", choices=["auto", "on", "off"], help="HF's model.compiled_decode")
    p.add_argument("--vllm-python", default="", help="default: $SKILLWEAVE_VLLM_PYTHON, else .venv-vllm")
    p.add_argument("--skillpack", choices=["none", "int", "fp"], default="none",
                   help="a random skillpack attached, HF on this path, vLLM on the fp path (default none)")
    p.add_argument("--served", choices=["folded", "lora"], default="folded",
                   help="how vLLM serves the skillpack (eval.vllm_adapters; default folded)")
    p.add_argument("--quick", action="store_true", help="6 docs, 16 tokens, batch 3 (use with a tiny --model)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.limit, args.max_gen_toks, args.batch_size = 6, 16, 3
    args.vllm_python = vllm_python(args.vllm_python)
    if args.vllm_python is None:
        p.error("no vLLM environment (`make vllm`, or --vllm-python)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_plugins()
    torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir(args.model)
    tok, model = load_tokenizer(model_dir), load_model(model_dir, dtype=torch.float32).eval()
    length = min(model.config.max_position_embeddings, 4096)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    served_dir, adapter, rank = model_dir, None, 0
    if args.skillpack != "none":
        skillpack = random_skillpack(model, 0)
        attach_skillpack(model, skillpack, int_mm=args.skillpack == "int")
        if args.served == "lora":
            adapter, rank = work / "skillpack", lora_rank(skillpack)
            export_skillpack(skillpack, adapter, str(model_dir))
        with backbone_modules(model) as base:  # the dense residuals are in its weights either way
            served_dir = work / "backbone"
            folded = args.served == "folded"
            state = fold_deltas(base.state_dict(), adapter_deltas(model, "skillpack")) if folded else None
            base.save_pretrained(served_dir, state_dict=state)
    t0 = time.perf_counter()
    with VLLMEngine(served_dir, python=args.vllm_python, dtype="float32", seed=0, max_model_len=length,
                    threads=args.threads, log_path=cache_dir() / "logs" / "bench-eval-vllm.log",
                    max_lora_rank=rank) as engine:
        engine_start_s = time.perf_counter() - t0
        served = Served(engine, adapter, folded=args.skillpack != "none" and args.served == "folded")
        runs = {
            "hf": lambda: evaluate(model, tok, [args.task], limit=args.limit, max_gen_toks=args.max_gen_toks,
                                   batch_size=args.batch_size, compiled_decode=args.compiled_decode),
            "vllm": lambda: evaluate(None, tok, [args.task], limit=args.limit, max_gen_toks=args.max_gen_toks,
                                     batch_size=args.batch_size, engine=served),
        }
        seconds: dict[str, list[float]] = {"hf": [], "vllm": []}
        cpu_seconds = {"hf": 0.0, "vllm": 0.0}
        results = {}
        for r in range(args.repeats):
            for name in (["hf", "vllm"] if r % 2 == 0 else ["vllm", "hf"]):
                # CPU: this process's (all of HF's; lm-eval's own work for vLLM) plus, for vLLM, the engine's
                c0, e0, t0 = time.process_time(), engine.cpu_seconds(), time.perf_counter()
                results[name] = runs[name]()[args.task]
                seconds[name].append(time.perf_counter() - t0)
                cpu_seconds[name] += time.process_time() - c0 + (engine.cpu_seconds() - e0 if name == "vllm" else 0.0)
                print(f"  round {r} {name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
        version = engine.version
    shutil.rmtree(work)
    answers = {name: [s["response"] for s in res["samples"]] for name, res in results.items()}
    same = sum(a == b for a, b in zip(answers["hf"], answers["vllm"], strict=True))
    ratio = statistics.median(v / h for v, h in zip(seconds["vllm"], seconds["hf"]))
    rows = [{"backend": name, "median_s": round(statistics.median(seconds[name]), 1), "rounds_s": [round(x, 1) for x in seconds[name]],
             "docs_per_s": round(args.limit / statistics.median(seconds[name]), 3), "score": results[name]["score"],
             "stderr": results[name]["stderr"], "n": results[name]["n"],
             "cpu_seconds": round(cpu_seconds[name], 1)} for name in ("hf", "vllm")]
    rows[1]["ratio_vs_hf"] = round(ratio, 3)
    result = {
        "command": " ".join(["python", "bench/eval.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "vllm": version, "threads": args.threads, "task": args.task, "limit": args.limit,
        "max_gen_toks": args.max_gen_toks, "batch_size": args.batch_size, "compiled_decode": args.compiled_decode,
        "repeats": args.repeats, "skillpack": args.skillpack,
        "served": args.served if args.skillpack != "none" else None, "engine_start_s": round(engine_start_s, 1),
        "identical_answers": same,
        "wall_s": round(time.perf_counter() - started, 1), "load_average_1min": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print("| backend | median s | docs/s | x hf (same round) | score ± stderr |\n|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['median_s']:.1f} | {r['docs_per_s']:.3f} | {r.get('ratio_vs_hf', 1.0):.2f} "
              f"| {r['score']:.3f} ± {r['stderr']:.3f} |")
    print(f"\nidentical answers: {same}/{len(answers['hf'])}; engine start {engine_start_s:.0f} s\nwrote {args.out}")


if __name__ == "__main__":
    main()
