"""Sampling answers from a model (the generate stage, the dev split, bench/generate.py) and reading
the prompts back from a generate artifact's samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from . import decoding
from .config import SamplingConfig
from .models import chat_prompt


def batch_seed(seed: int, dpo_round: int, batch: int) -> int:
    """The sampling seed of one batch; round 0 keeps the one-round seeds."""
    return seed * 1_000_003 + batch + dpo_round * 7_000_000_001


@torch.no_grad()
def sample_batch(
    model, tok, batch: list[dict], sampling: SamplingConfig, seed: int, greedy: bool = False,
    compiled: bool = False, rows: Optional[int] = None, engine=None,
) -> list[dict]:
    """`samples_per_prompt` sampled answers to each prompt (greedy: one greedy answer each), with token
    counts and truncation flags.

    `engine` (a skillweave.engines.VLLMEngine) decodes instead of `model` (None then): the same prompt
    tokens, stop tokens (of the engine's model's generation config) and accounting.

    `compiled` decodes with a static cache and a compiled decode step (skillweave.decoding); a greedy
    batch is padded to `rows` prompts (the call site's batch size, so that its short last batch reuses
    the graph; default len(batch)). A sampled batch is not: padding rows would draw random numbers too
    and change the samples, so a short last batch compiles a graph of its own instead.
    """
    texts = [chat_prompt(tok, row["prompt"]) for row in batch]
    per = 1 if greedy else sampling.samples_per_prompt
    stop_ids = _stop_ids((engine or model).generation_config, tok)
    if engine is not None:
        prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        outputs = engine.generate(prompts, n=per, greedy=greedy, temperature=sampling.temperature, top_p=sampling.top_p,
                                  max_new_tokens=sampling.max_new_tokens, stop_token_ids=sorted(stop_ids), seed=seed)
        gen = [(o.ids, o.stopped) for per_prompt in outputs for o in per_prompt]
    else:
        gen = [(ids, False) for ids in _hf_generate(model, tok, texts, sampling, seed, per, greedy, compiled, rows)]
    out = []
    for j, (ids, stopped) in enumerate(gen):
        end = next((k for k, t in enumerate(ids) if t in stop_ids), len(ids) if stopped else None)
        row = batch[j // per]
        out.append(
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
    return out


def _hf_generate(model, tok, texts: list[str], sampling: SamplingConfig, seed: int, per: int, greedy: bool,
                 compiled: bool, rows: Optional[int]) -> list[list[int]]:
    """transformers' generate: each prompt's `per` answers' token ids (padding after a stop token included)."""
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    settings = {"do_sample": False} if greedy else {
        "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    out = decoding.generate(
        lambda inputs, **extra: model.generate(
            **inputs, **settings, max_new_tokens=sampling.max_new_tokens, num_return_sequences=per,
            pad_token_id=tok.pad_token_id, **extra,
        ),
        dict(enc),
        compiled=compiled,
        rows=(rows or len(texts)) if greedy else len(texts),
        total_length=enc["input_ids"].shape[1] + sampling.max_new_tokens,
        sequences_per_row=per,
    )
    return out[:, enc["input_ids"].shape[1] :].cpu().tolist()


def _stop_ids(generation_config, tok) -> set[int]:
    ids = {tok.eos_token_id}
    eos = generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if i is not None}


def domain_texts(samples_path, tok, n: int) -> list[str]:
    """The first `n` distinct prompts of a generate artifact, each with its first sampled answer, as
    the model reads them (chat template): the activations the domain's skillpack will see."""
    texts, seen = [], set()
    with open(samples_path) as f:
        for line in f:
            row = json.loads(line)
            if row["prompt_id"] in seen:
                continue
            seen.add(row["prompt_id"])
            texts.append(chat_prompt(tok, row["prompt"]) + row["response"])
            if len(texts) == n:
                break
    return texts


def training_prompts(samples_path: Path, limit: Optional[int] = None) -> list[str]:
    """The distinct prompts of a generate artifact, in order (the first `limit` of them when given)."""
    prompts, seen = [], set()
    with open(samples_path) as f:
        for line in f:
            row = json.loads(line)
            if row["prompt_id"] not in seen:
                seen.add(row["prompt_id"])
                prompts.append(row["prompt"])
                if limit is not None and len(prompts) == limit:
                    break
    return prompts
