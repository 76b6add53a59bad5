"""Stage 1a: the backbone answers its domain's prompts itself, several samples per prompt.

Batches are written as shards, so a killed run resumes at the first missing batch; each batch has
its own seed, so a resumed run, or one sharded over several processes, samples exactly what an
uninterrupted single process would have.

Online DPO (`dpo.rounds`, METHOD.md stage 1.4): at round r > 0 the policy theta_0 + Delta_{r-1} (the
previous round's dpo artifact) samples instead of the backbone, and it answers new prompts: rows
r*n .. (r+1)*n - 1 of the domain's seeded prompt source (n = num_prompts, the seed unchanged), so
no round repeats an earlier round's prompts; the sampling seeds differ per round as well. Round 0
is exactly the one-round stage (same artifact key).
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Optional

import torch
from tqdm import tqdm

from ..core.artifacts import ArtifactRef, atomic_write_json, read_jsonl, write_jsonl
from ..core.distributed import process_rank
from ..core.engine import Context, Need, Stage, register_stage
from ..core.errors import DataError
from ..decoding import use_compiled_decode
from ..deltas import add_delta, previous_delta
from ..engines import resolve_backend, vllm_engine
from ..models import chat_prompt, generation_dtype, load_model, load_tokenizer
from ..prompts import PROMPT_SOURCES, SOURCE_VERSIONS, check_source
from ..sampling import batch_seed, sample_batch


def check(ctx: Context, domain: Optional[str]) -> None:
    """The prompt source exists and takes its kwargs."""
    source = ctx.for_domain(domain).domain.prompt_source
    check_source(source.name, source.kwargs)


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    config = {
        "model": ctx.base_fingerprint,
        "domain": domain,
        "prompt_source": asdict(cfg.domain.prompt_source),
        "sampling": asdict(cfg.domain.sampling),
        "contamination_ngram": cfg.domain.contamination_ngram,
        "dtype": generation_dtype(cfg.model.generation_dtype),
    }
    if resolve_backend(cfg.model.generation_backend, cfg.model.vllm_python) == "vllm":
        config["backend"] = {"name": "vllm", "request_seed": cfg.model.vllm_request_seed}
    if cfg.domain.prompt_source.name in SOURCE_VERSIONS:
        config["prompt_source_version"] = SOURCE_VERSIONS[cfg.domain.prompt_source.name]
    if ctx.dpo_round == 0:
        return config, {}
    # Round r samples with the policy the previous round trained.
    return {**config, "round": ctx.dpo_round}, {"policy": Need(ctx.at_round(ctx.dpo_round - 1), "dpo", domain)}


def round_prompts(ctx: Context, domain: Optional[str]) -> list[dict]:
    """This round's slice of the domain's prompt source: rows r*n .. (r+1)*n - 1 of its seeded draw.

    Raises:
        DataError: the source cannot produce that many distinct prompts.
    """
    cfg = ctx.for_domain(domain)
    source, n, r = cfg.domain.prompt_source, cfg.domain.sampling.num_prompts, ctx.dpo_round
    try:
        rows = PROMPT_SOURCES.get(source.name)(n=(r + 1) * n, seed=cfg.domain.sampling.seed, **source.kwargs)
        if r > 0 and len(rows) < (r + 1) * n:
            raise DataError(f"prompt source {source.name!r} gave only {len(rows)} prompts")
    except ValueError as e:
        if r == 0:
            raise
        raise DataError(
            f"{e}: round {r} of dpo.rounds={cfg.dpo.rounds} needs {(r + 1) * n} prompts in all "
            f"({n} new ones a round); lower dpo.rounds or domain.sampling.num_prompts"
        ) from None
    return rows[r * n :]


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    cfg = ctx.for_domain(domain)
    source, sampling = cfg.domain.prompt_source, cfg.domain.sampling
    prompts = round_prompts(ctx, domain)
    if not prompts:
        raise DataError(f"prompt source {source.name!r} of conf/domain/{domain}.yaml yielded no prompts")
    dropped = 0
    if cfg.domain.contamination_ngram:
        from ..contamination import check_prompts
        from ..prompts import template_draw  # noqa: I001  (contamination reads every eval set: only when asked)

        basis = template_draw(source.name, cfg.domain.sampling.seed, source.kwargs)
        kept, report = check_prompts(prompts, n=cfg.domain.contamination_ngram, template_prompts=basis)
        atomic_write_json(ref.path / "contamination.json", report)
        dropped, prompts = len(prompts) - len(kept), kept
        if not prompts:
            raise DataError(
                f"every prompt of {source.name!r} (conf/domain/{domain}.yaml) overlaps an eval set "
                f"({ref.path / 'contamination.json'}); change the source or domain.contamination_ngram"
            )

    rank, world = process_rank()
    dtype = getattr(torch, generation_dtype(cfg.model.generation_dtype))
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    backend = resolve_backend(cfg.model.generation_backend, cfg.model.vllm_python)
    tok = load_tokenizer(ctx.model_dir)
    tok.padding_side = "left"  # decoder-only batches pad on the left so generation continues the prompt
    model = engine = None
    if backend == "hf" or "policy" in inputs:
        model = load_model(ctx.model_dir, dtype=dtype)
        delta = previous_delta(inputs, ctx.base_fingerprint)
        if delta is not None:
            add_delta(model, delta)  # theta_0 + Delta_{r-1}, in the sampling dtype
            del delta
    if backend == "vllm":
        longest = max(len(tok(chat_prompt(tok, p["prompt"]), add_special_tokens=False)["input_ids"]) for p in prompts)
        engine = vllm_engine(ctx, model, ref.path, dtype=str(dtype).removeprefix("torch."),
                             seed=batch_seed(sampling.seed, ctx.dpo_round, 0), max_model_len=longest + sampling.max_new_tokens)
        model = None  # the engine holds the weights
    else:
        model = model.to(device)

    shards = ref.path / "shards"
    shards.mkdir(exist_ok=True)
    batches = [prompts[i : i + sampling.batch_size] for i in range(0, len(prompts), sampling.batch_size)]
    new_tokens, seconds = 0, 0.0
    # Under a multi-process launch (torchrun, accelerate, srun) rank r samples batches r, r+world, ...;
    # per-batch seeds make the result identical for any number of processes (HF; a vLLM engine per rank is
    # seeded once, so its samples depend on the number of processes: skillweave.engines).
    mine = [(i, b) for i, b in enumerate(batches) if i % world == rank]
    # Decided on the whole run's batches, not this rank's, so that every rank decodes the same way.
    compiled = engine is None and use_compiled_decode(cfg.model.compiled_decode, model.device,
                                                      len(batches) * sampling.max_new_tokens)
    with engine or nullcontext():
        for i, batch in tqdm(mine, desc=f"generate[{domain}]", unit="batch", disable=rank != 0):
            shard = shards / f"{i:05d}.jsonl"
            if shard.exists():
                continue
            t0 = time.perf_counter()
            rows = sample_batch(model, tok, batch, sampling, seed=batch_seed(sampling.seed, ctx.dpo_round, i),
                                compiled=compiled, rows=sampling.batch_size, engine=engine)
            seconds += time.perf_counter() - t0
            new_tokens += sum(r["n_tokens"] for r in rows)
            write_jsonl(shard, rows)
    if engine is not None and engine.written is not None:
        shutil.rmtree(engine.written)  # the policy's weights written for the engine

    local_tokens_per_s = round(new_tokens / seconds, 1) if seconds else None
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank's shards are on the (shared) filesystem
        if rank != 0:
            return {}
    rows = [row for i in range(len(batches)) for row in read_jsonl(shards / f"{i:05d}.jsonl")]
    write_jsonl(ref.file("samples"), rows)
    return {
        "policy": inputs["policy"].key if "policy" in inputs else None,
        "prompts": len(prompts),
        "contaminated_prompts_dropped": dropped,
        "samples": len(rows),
        "truncated_fraction": round(sum(r["truncated"] for r in rows) / len(rows), 4),
        "mean_tokens": round(sum(r["n_tokens"] for r in rows) / len(rows), 1),
        "tokens_per_s": local_tokens_per_s,
        "processes": world,
        "device": device,
        "dtype": str(dtype),
        "backend": backend if engine is None else f"vllm {engine.version}",
    }


def progress(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> str:
    written = len(list((ref.path / "shards").glob("*.jsonl")))
    return f"{written} batches written" if written else ""


register_stage(Stage(
    "generate", per_domain=True, plan=plan, run=run, outputs={"samples": "samples.jsonl"}, distributed=True, rounds=True,
    check=check, progress=progress,
))
