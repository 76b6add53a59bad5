"""lm-eval models over skillweave's decoders: HFLM with compiled decoding, and a generation engine (vLLM).

Apart from skillweave/evaluation.py on purpose: that file is part of every eval row's key (eval_tasks.
task_digest: how documents are chosen and a score is read off lm-eval), and how answers are decoded is
keyed as a setting where it changes them (eval.backend), not by this file's bytes.
"""

from __future__ import annotations

from typing import Any

from . import decoding
from .engines import has_forward_hooks


def compiled_hflm():
    """lm-eval's HFLM whose generation decodes compiled (skillweave.decoding): every batch padded to
    the full batch size and a bucketed static cache, so one graph serves the whole eval (lm-eval
    sorts requests longest first: the first batch sets the cache length). A model with forward hooks
    decodes eagerly: Twin-Merging's router reads the prompt's 2-D attention mask, which a static cache
    turns into a 4-D one (the paper table's twin_merging row stopped on IFEval, the first of its tasks long
    enough for `model.compiled_decode=auto` to compile)."""
    from lm_eval.models.huggingface import HFLM

    class CompiledHFLM(HFLM):
        def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
            inputs = {"input_ids": context, "attention_mask": generation_kwargs.pop("attention_mask")}
            return decoding.generate(
                lambda padded, **extra: HFLM._model_generate(
                    self, padded["input_ids"], max_length, stop, attention_mask=padded["attention_mask"],
                    **generation_kwargs, **extra,
                ),
                inputs, compiled=not has_forward_hooks(self.model), rows=self.batch_size,
                total_length=max_length,
            )

    return CompiledHFLM


def engine_lm(engine: Any, tokenizer: Any):
    """lm-eval's view of a generation engine: greedy `generate_until` as HFLM does it (the tokenizer's chat
    template, contexts tokenized without special tokens and left-truncated to the engine's context less the
    answer's budget, the answer decoded without them and cut at the first stop string). A stop string that is one token stops the engine; others are cut afterwards.
    Log-likelihood requests are refused: skillweave's tasks all generate."""
    from lm_eval.api.model import LM
    from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text

    class EngineLM(LM):
        @property
        def tokenizer_name(self) -> str:
            return tokenizer.name_or_path.replace("/", "__")

        def chat_template(self, chat_template=False):
            return tokenizer.chat_template

        def apply_chat_template(self, chat_history, add_generation_prompt=True) -> str:
            return tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                 continue_final_message=not add_generation_prompt)

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            # Every request goes to the engine at once (one call per stop strings and token limit): it
            # schedules its own batches, so eval.batch_size does not apply.
            eos = tokenizer.decode(tokenizer.eos_token_id, skip_special_tokens=False)
            groups: dict[tuple, list[int]] = {}
            for i, req in enumerate(requests):
                kwargs = dict(req.args[1])
                until = tuple(handle_stop_sequences(kwargs.pop("until", None), eos=eos))
                groups.setdefault((until, kwargs.get("max_gen_toks", 256)), []).append(i)
            texts: list[str] = [""] * len(requests)
            for (until, max_gen_toks), members in groups.items():
                stop_ids = {tokenizer.eos_token_id}
                for term in until:
                    ids = tokenizer(term, add_special_tokens=False)["input_ids"]
                    if len(ids) == 1:
                        stop_ids.add(ids[0])
                # As HFLM: a prompt longer than the model's context less the answer's budget loses its start.
                keep = engine.max_model_len - max_gen_toks
                if keep < 1:
                    raise ValueError(f"eval.max_gen_toks={max_gen_toks} leaves no room for a prompt in the engine's "
                                     f"context of {engine.max_model_len} tokens: lower eval.max_gen_toks")
                prompts = [tokenizer(requests[i].args[0], add_special_tokens=False)["input_ids"][-keep:] for i in members]
                outputs = engine.generate(prompts, n=1, greedy=True, temperature=1.0, top_p=1.0,
                                          max_new_tokens=max_gen_toks, stop_token_ids=sorted(stop_ids), seed=0)
                for i, (o,) in zip(members, outputs, strict=True):
                    texts[i] = postprocess_generated_text(tokenizer.decode(o.ids, skip_special_tokens=True), list(until), None)
            return texts

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("eval.backend=vllm evaluates generate_until tasks only; "
                                      "a log-likelihood task needs eval.backend=hf")

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self.loglikelihood(requests)

    return EngineLM()
