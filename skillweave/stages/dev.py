"""Stage dev: the dev split DPO's settings are tuned on, never the eval set (issue: "a real gain").

Held-out prompts of the domain's own training distribution: its prompt source drawn with another
seed, minus every prompt a training round uses, scored by the domain's rules (the verifiers the pairs
came from). The policy DPO started from (the backbone, or the previous round's) and the trained one
answer them greedily in fp32 (a bf16 copy would round most of a small delta away). The manifest
records both scores, their paired difference with its standard error, the share of answers that
changed and the relative weight change; a sweep is one command and one table:

    python -m skillweave -m stage=dev domain=instructions dpo.learning_rate=5e-6,1e-5,2e-5
    python -m skillweave.sweep artifacts instructions

stage=dev trains what it scores if that is missing (every online round, as stage=dpo). The starting
policy's answers are their own artifact (`dev/<domain>-start-<key>`), shared by every point of a sweep.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from ..config import SamplingConfig
from ..core.artifacts import (
    ArtifactRef,
    artifact_lock,
    content_key,
    make_ref,
    read_jsonl,
    run_clock,
    write_jsonl,
    write_manifest,
)
from ..core.engine import Context, Need, Pulls, Stage, ref_for, register_stage
from ..core.errors import DataError
from ..decoding import use_compiled_decode
from ..deltas import add_delta, load_delta
from ..engines import resolve_backend, vllm_engine
from ..evaluation import paired_difference
from ..models import cache_dir, chat_prompt, load_model, load_tokenizer
from ..pairs import rule_set_path, score_sample
from ..prompts import PROMPT_SOURCES
from ..rules import load_rule_set
from ..sampling import sample_batch

DEV_SEED_OFFSET = 7919
"""The dev draw's seed is domain.sampling.seed + this: another draw of the same source."""
log = logging.getLogger("skillweave")
_WARNED: set[str] = set()


def dev_prompts(ctx: Context, domain: str) -> tuple[list[dict], int]:
    """(the dev prompts, how many of the draw were dropped because a training round uses them).

    Raises:
        DataError: every drawn prompt is also a training prompt (a small source such as code_tasks
        asked for more prompts than it has); the message names the settings to lower.
    """
    cfg = ctx.for_domain(domain)
    source, s = cfg.domain.prompt_source, cfg.domain.sampling
    make = PROMPT_SOURCES.get(source.name)
    training = {r["id"] for r in make(n=cfg.dpo.rounds * s.num_prompts, seed=s.seed, **source.kwargs)}
    draw = make(n=cfg.dev.prompts, seed=s.seed + DEV_SEED_OFFSET, **source.kwargs)
    kept = [r for r in draw if r["id"] not in training]
    if not kept:
        raise DataError(
            f"all {len(draw)} dev prompts of {source.name!r} are training prompts of domain {domain}: lower "
            f"domain.sampling.num_prompts x dpo.rounds ({cfg.dpo.rounds * s.num_prompts}) or dev.prompts"
        )
    if 2 * len(kept) < len(draw):
        # A small source (code_tasks: 205 training tasks) mostly drawn for training leaves a dev split too
        # small to tell a gain from noise; say so before hours of training are read off it.
        message = (
            f"dev[{domain}]: only {len(kept)} of {len(draw)} dev prompts are not training prompts; a paired gain on "
            f"{len(kept)} prompts has a wide standard error: raise dev.prompts (about "
            f"{len(draw) * cfg.dev.prompts // len(kept)} keeps {cfg.dev.prompts}) or lower domain.sampling.num_prompts"
        )
        if message not in _WARNED:  # planning and running both ask for the split: say it once
            _WARNED.add(message)
            log.warning(message)
    return kept, len(draw) - len(kept)


def _answer_settings(ctx: Context, domain: str) -> dict:
    cfg = ctx.for_domain(domain)
    prompts, _ = dev_prompts(ctx, domain)
    settings = {
        "prompts": content_key(sorted(r["id"] for r in prompts)),
        "max_new_tokens": cfg.dev.max_new_tokens or cfg.domain.sampling.max_new_tokens,
        "model": ctx.base_fingerprint,
    }
    if resolve_backend(cfg.model.generation_backend, cfg.model.vllm_python) == "vllm":
        settings["backend"] = "vllm"  # its fp32 kernels are not transformers': ties may break otherwise
    return settings


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    path = rule_set_path(cfg.domain.rules)
    rules = content_key(path.read_text()) if path.is_file() else str(path)
    return {"answers": _answer_settings(ctx, domain), "rules": rules}, {"dpo": Need(ctx, "dpo", domain)}


def start_ref(ctx: Context, domain: str) -> ArtifactRef:
    """The starting policy's answers: the backbone's at round 0, theta_0 + Delta_{r-1} at round r."""
    inputs = {"policy": ref_for(ctx.at_round(ctx.dpo_round - 1), "dpo", domain)} if ctx.dpo_round > 0 else {}
    return make_ref(ctx.root, "dev", f"{domain}-start", {"answers": _answer_settings(ctx, domain)}, inputs,
                    outputs=STAGE.outputs)


def answer(ctx: Context, domain: str, prompts: list[dict], delta_path: Optional[Path], desc: str) -> list[dict]:
    """Greedy fp32 answers of theta_0 (+ the delta at `delta_path`) to `prompts`, by the generation backend."""
    cfg = ctx.for_domain(domain)
    backend = resolve_backend(cfg.model.generation_backend, cfg.model.vllm_python)
    tok = load_tokenizer(ctx.model_dir)
    tok.padding_side = "left"
    sampling = SamplingConfig(max_new_tokens=cfg.dev.max_new_tokens or cfg.domain.sampling.max_new_tokens)
    model = None
    if backend == "hf" or delta_path is not None:
        model = load_model(ctx.model_dir, dtype=torch.float32)
        if delta_path is not None:
            add_delta(model, load_delta(delta_path, backbone_fingerprint=ctx.base_fingerprint))
    rows, b = [], cfg.dev.batch_size
    batches = [prompts[i : i + b] for i in range(0, len(prompts), b)]
    if backend == "vllm":
        longest = max(len(tok(chat_prompt(tok, p["prompt"]), add_special_tokens=False)["input_ids"]) for p in prompts)
        with tempfile.TemporaryDirectory(dir=cache_dir()) as work, \
                vllm_engine(ctx, model, Path(work), dtype="float32", seed=0, max_model_len=longest + sampling.max_new_tokens) as engine:
            for batch in tqdm(batches, desc=desc, unit="batch"):
                rows += sample_batch(None, tok, batch, sampling, seed=0, greedy=True, engine=engine)
        return rows
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    compiled = use_compiled_decode(cfg.model.compiled_decode, model.device, len(batches) * sampling.max_new_tokens)
    for batch in tqdm(batches, desc=desc, unit="batch"):
        rows += sample_batch(model, tok, batch, sampling, seed=0, greedy=True, compiled=compiled, rows=b)
    return rows


def _cached_answers(ref: ArtifactRef, make) -> list[dict]:
    with artifact_lock(ref):
        if not ref.complete:
            with run_clock(ref) as started:
                rows = make()
                write_jsonl(ref.file("answers"), rows)
                write_manifest(ref, {"answers": len(rows)}, started)
    return read_jsonl(ref.file("answers"))


def score_rows(ctx: Context, domain: str, rows: list[dict]) -> list[dict]:
    rule_set = load_rule_set(domain, rule_set_path(ctx.for_domain(domain).domain.rules))
    return [score_sample(rule_set, r) for r in rows]


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    cfg = ctx.for_domain(domain)
    prompts, dropped = dev_prompts(ctx, domain)
    first = start_ref(ctx, domain)
    policy = ref_for(ctx.at_round(ctx.dpo_round - 1), "dpo", domain).file("delta") if ctx.dpo_round > 0 else None
    start = score_rows(ctx, domain, _cached_answers(first, lambda: answer(ctx, domain, prompts, policy, f"dev[{domain}] start")))
    trained = score_rows(ctx, domain, answer(ctx, domain, prompts, inputs["dpo"].file("delta"), f"dev[{domain}] trained"))
    by_id = {r["prompt_id"]: r for r in start}
    start = [by_id[r["prompt_id"]] for r in trained]
    write_jsonl(
        ref.file("answers"),
        ({**t, "start_response": s["response"], "start_score": s["score"], "start_passed": s["passed"]} for s, t in zip(start, trained)),
    )
    delta, stderr = paired_difference([s["score"] for s in start], [t["score"] for t in trained])
    n = len(trained)
    dpo = inputs["dpo"].manifest()["metrics"]
    return {
        "prompts": n,
        "dropped_training_prompts": dropped,
        "score": sum(t["score"] for t in trained) / n,
        "score_start": sum(s["score"] for s in start) / n,
        "delta": delta,
        "delta_stderr": stderr,
        "pass_rate": sum(t["passed"] for t in trained) / n,
        "pass_rate_start": sum(s["passed"] for s in start) / n,
        "changed": sum(s["response"] != t["response"] for s, t in zip(start, trained)) / n,
        "truncated": sum(t["truncated"] for t in trained) / n,
        "truncated_start": sum(s["truncated"] for s in start) / n,
        "relative_weight_change": dpo.get("relative_weight_change"),
        "pairs": dpo.get("pairs"),
        "dpo": {k: v for k, v in asdict(cfg.dpo).items() if k in ("learning_rate", "max_steps", "beta", "nll_weight", "rounds")},
        "round": ctx.dpo_round,
    }


STAGE = register_stage(Stage(
    "dev", per_domain=True, plan=plan, run=run, outputs={"answers": "answers.jsonl"}, pulls=Pulls.everything,
))

