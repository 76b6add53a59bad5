"""A stand-in for vLLM's offline API (LLM, SamplingParams, TokensPrompt) over transformers, so that CI
tests skillweave's engine process, protocol and call sites without vLLM: greedy answers are exactly
transformers' greedy answers, and a request's LoRA adapter is PEFT's. `FAKE_VLLM_FAIL=1` makes the
engine fail to start."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__version__ = "0.0+fake"


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@dataclass
class _Completion:
    index: int
    token_ids: list[int]
    finish_reason: str


@dataclass
class _Request:
    outputs: list[_Completion]


class LLM:
    def __init__(self, model: str, dtype: str, seed: int, max_model_len: int, skip_tokenizer_init: bool, enforce_eager: bool,
                 kv_cache_memory_bytes: int, enable_lora: bool = False, max_lora_rank: int = 16, max_loras: int = 1):
        if os.environ.get("FAKE_VLLM_FAIL"):
            raise RuntimeError("fake engine told to fail")
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).eval()
        self.max_model_len = max_model_len
        self.lora = {"enabled": enable_lora, "max_rank": max_lora_rank, "models": {}}
        torch.manual_seed(seed)

    def _model_for(self, lora_request):
        if lora_request is None:
            return self.model
        if not self.lora["enabled"]:
            raise ValueError("LoRA is not enabled")
        models = self.lora["models"]
        if lora_request.lora_int_id not in models:
            import copy

            from peft import PeftConfig, PeftModel

            rank = PeftConfig.from_pretrained(lora_request.lora_path).r
            if rank > self.lora["max_rank"]:  # as vLLM: an adapter above the engine's max rank is refused
                raise ValueError(f"LoRA rank {rank} is greater than max_lora_rank {self.lora['max_rank']}")
            models[lora_request.lora_int_id] = PeftModel.from_pretrained(copy.deepcopy(self.model), lora_request.lora_path).eval()
        return models[lora_request.lora_int_id]

    @torch.no_grad()
    def generate(self, prompts, sampling: SamplingParams, use_tqdm: bool = False, lora_request=None) -> list[_Request]:
        model, out = self._model_for(lora_request), []
        for prompt in prompts:
            ids = torch.tensor([prompt["prompt_token_ids"]])
            if ids.shape[1] + sampling.max_tokens > self.max_model_len:
                raise ValueError(f"prompt of {ids.shape[1]} tokens + {sampling.max_tokens} > max_model_len {self.max_model_len}")
            settings = {"do_sample": False} if sampling.temperature == 0 else {
                "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=sampling.max_tokens,
                                 min_new_tokens=sampling.min_tokens, num_return_sequences=sampling.n,
                                 eos_token_id=list(sampling.stop_token_ids), pad_token_id=sampling.stop_token_ids[0],
                                 **settings)
            completions = []
            for i, seq in enumerate(gen[:, ids.shape[1]:].tolist()):
                end = next((k + 1 for k, t in enumerate(seq) if t in sampling.stop_token_ids), None)
                completions.append(_Completion(i, seq[:end], "length" if end is None else "stop"))
            out.append(_Request(completions))
        return out
