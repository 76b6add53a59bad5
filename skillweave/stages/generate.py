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

import json
import os
import time
from dataclasses import asdict
from typing import Optional

import torch
from tqdm import tqdm

from ..artifacts import ArtifactRef, atomic_write_json, atomic_write_text
from ..cluster import process_rank
from ..config import SamplingConfig
from ..models import chat_prompt, generation_dtype, load_model, load_tokenizer
from ..pipeline import STAGES, Context, Stage, ref_for

SAMPLES = "samples.jsonl"


def plan(ctx: Context, domain: Optional[str]):
    from ..prompts import SOURCE_VERSIONS

    cfg = ctx.for_domain(domain)
    config = {
        "model": ctx.base_fingerprint,
        "domain": domain,
        "prompt_source": asdict(cfg.domain.prompt_source),
        "sampling": asdict(cfg.domain.sampling),
        "contamination_ngram": cfg.domain.contamination_ngram,
        "dtype": generation_dtype(cfg.model.generation_dtype),
    }
    if cfg.domain.prompt_source.name in SOURCE_VERSIONS:
        config["prompt_source_version"] = SOURCE_VERSIONS[cfg.domain.prompt_source.name]
    if ctx.dpo_round == 0:
        return config, {}
    # Round r samples with the policy the previous round trained.
    return {**config, "round": ctx.dpo_round}, {"policy": ref_for(ctx.at_round(ctx.dpo_round - 1), "dpo", domain)}


def round_prompts(ctx: Context, domain: Optional[str]) -> list[dict]:
    """This round's slice of the domain's prompt source: rows r*n .. (r+1)*n - 1 of its seeded draw.

    Raises:
        ValueError: the source cannot produce that many distinct prompts.
    """
    from ..prompts import PROMPT_SOURCES

    cfg = ctx.for_domain(domain)
    source, n, r = cfg.domain.prompt_source, cfg.domain.sampling.num_prompts, ctx.dpo_round
    try:
        rows = PROMPT_SOURCES.get(source.name)(n=(r + 1) * n, seed=cfg.domain.sampling.seed, **source.kwargs)
        if r > 0 and len(rows) < (r + 1) * n:
            raise ValueError(f"prompt source {source.name!r} gave only {len(rows)} prompts")
    except ValueError as e:
        if r == 0:
            raise
        raise ValueError(
            f"{e}: round {r} of dpo.rounds={cfg.dpo.rounds} needs {(r + 1) * n} prompts in all "
            f"({n} new ones a round); lower dpo.rounds or domain.sampling.num_prompts"
        ) from None
    return rows[r * n :]


def previous_delta(ctx: Context, inputs: dict) -> Optional[dict[str, torch.Tensor]]:
    """Delta_{r-1} of the previous round's dpo artifact (input `policy`), or None at round 0."""
    if "policy" not in inputs:
        return None
    from .dpo import DELTA, load_delta

    return load_delta(inputs["policy"].path / DELTA, backbone_fingerprint=ctx.base_fingerprint)


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    cfg = ctx.for_domain(domain)
    source, sampling = cfg.domain.prompt_source, cfg.domain.sampling
    prompts = round_prompts(ctx, domain)
    if not prompts:
        raise ValueError(f"prompt source {source.name!r} of conf/domain/{domain}.yaml yielded no prompts")
    dropped = 0
    if cfg.domain.contamination_ngram:
        from ..contamination import check_prompts
        from ..prompts import template_draw

        basis = template_draw(source.name, cfg.domain.sampling.seed, source.kwargs)
        kept, report = check_prompts(prompts, n=cfg.domain.contamination_ngram, template_prompts=basis)
        atomic_write_json(ref.path / "contamination.json", report)
        dropped, prompts = len(prompts) - len(kept), kept
        if not prompts:
            raise ValueError(
                f"every prompt of {source.name!r} (conf/domain/{domain}.yaml) overlaps an eval set "
                f"({ref.path / 'contamination.json'}); change the source or domain.contamination_ngram"
            )

    rank, world = process_rank()
    dtype = getattr(torch, generation_dtype(cfg.model.generation_dtype))
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    model = load_model(ctx.model_dir, dtype=dtype)
    delta = previous_delta(ctx, inputs)
    if delta is not None:
        from .eval import add_delta

        add_delta(model, delta)  # theta_0 + Delta_{r-1}, in the sampling dtype
        del delta
    model = model.to(device)
    tok = load_tokenizer(ctx.model_dir)
    tok.padding_side = "left"  # decoder-only batches pad on the left so generation continues the prompt

    shards = ref.path / "shards"
    shards.mkdir(exist_ok=True)
    batches = [prompts[i : i + sampling.batch_size] for i in range(0, len(prompts), sampling.batch_size)]
    new_tokens, seconds = 0, 0.0
    # Under a multi-process launch (torchrun, accelerate, srun) rank r samples batches r, r+world, ...;
    # per-batch seeds make the result identical for any number of processes.
    mine = [(i, b) for i, b in enumerate(batches) if i % world == rank]
    for i, batch in tqdm(mine, desc=f"generate[{domain}]", unit="batch", disable=rank != 0):
        shard = shards / f"{i:05d}.jsonl"
        if shard.exists():
            continue
        t0 = time.perf_counter()
        rows = sample_batch(model, tok, batch, sampling, seed=batch_seed(sampling.seed, ctx.dpo_round, i))
        seconds += time.perf_counter() - t0
        new_tokens += sum(r["n_tokens"] for r in rows)
        atomic_write_text(shard, "".join(json.dumps(r) + "\n" for r in rows))

    local_tokens_per_s = round(new_tokens / seconds, 1) if seconds else None
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank's shards are on the (shared) filesystem
        if rank != 0:
            return {}
    rows = [json.loads(line) for i in range(len(batches)) for line in (shards / f"{i:05d}.jsonl").open()]
    atomic_write_text(ref.path / SAMPLES, "".join(json.dumps(r) + "\n" for r in rows))
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
    }


def batch_seed(seed: int, dpo_round: int, batch: int) -> int:
    """The sampling seed of one batch; round 0 keeps the one-round seeds."""
    return seed * 1_000_003 + batch + dpo_round * 7_000_000_001


@torch.no_grad()
def sample_batch(model, tok, batch: list[dict], sampling: SamplingConfig, seed: int, greedy: bool = False) -> list[dict]:
    """`samples_per_prompt` sampled answers to each prompt (greedy: one greedy answer each), with token
    counts and truncation flags."""
    texts = [chat_prompt(tok, row["prompt"]) for row in batch]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    per = 1 if greedy else sampling.samples_per_prompt
    decoding = {"do_sample": False} if greedy else {
        "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    out = model.generate(
        **enc,
        **decoding,
        max_new_tokens=sampling.max_new_tokens,
        num_return_sequences=per,
        pad_token_id=tok.pad_token_id,
    )
    gen = out[:, enc["input_ids"].shape[1] :].cpu()
    stop_ids = _stop_ids(model, tok)
    rows = []
    for j, seq in enumerate(gen):
        ids = seq.tolist()
        end = next((k for k, t in enumerate(ids) if t in stop_ids), None)
        row = batch[j // per]
        rows.append(
            {
                "prompt_id": row["id"],
                "prompt": row["prompt"],
                "meta": row["meta"],
                "sample": j % per,
                "response": tok.decode(ids[:end], skip_special_tokens=True),
                "n_tokens": len(ids) if end is None else end,
                # Stopped by the token limit, not by the model: never usable as a chosen answer.
                "truncated": end is None,
            }
        )
    return rows


def _stop_ids(model, tok) -> set[int]:
    ids = {tok.eos_token_id}
    eos = model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if i is not None}


STAGES.register("generate")(Stage("generate", per_domain=True, plan=plan, run=run))
