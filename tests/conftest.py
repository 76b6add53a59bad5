"""Shared fixtures: tiny Llama models built in-process (no hub, no network)."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLCONFIGDIR", "/tmp/skillweave-mpl")
# model.generation_backend=auto would pick a checkout's .venv-vllm: tests ask for vLLM where they test it
os.environ["SKILLWEAVE_VLLM_PYTHON"] = ""

import pytest
import torch

from skillweave.app import load_plugins

load_plugins()  # every stage and eval configuration registered, as `python -m skillweave` does

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = "the a one two three four five six seven eight nine zero def return print add sum list yes no".split()


def build_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer (any text encodes) with ChatML special tokens and template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    return tok


def build_tiny_model(tok, seed: int = 0, hidden: int = 64, train_steps: int = 60):
    """A 2-layer Llama, trained for a few steps on short chat answers so it ends them with <|im_end|>."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    rng = random.Random(seed)
    texts = [
        tok.apply_chat_template(
            [
                {"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))},
                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 5)))},
            ],
            tokenize=False,
        )
        for _ in range(64)
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(train_steps):
        batch = tok(texts[(step * 16) % 64 : (step * 16) % 64 + 16], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=12)) for _ in range(200)]
    corpus += ["What is 12 + 30? Answer with a number. def f(x): return x * 2 assert f(2) == 4"]
    return build_tokenizer(corpus)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny HF model directory, made once per test session."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def fake_vllm_python(tmp_path_factory):
    """An interpreter whose `import vllm` is tests/fake_vllm (vLLM's offline API over transformers; the
    engine drops the parent's PYTHONPATH, so the wrapper sets it)."""
    import sys
    from pathlib import Path

    fake = Path(__file__).with_name("fake_vllm")
    path = tmp_path_factory.mktemp("fake-vllm-env") / "python"
    path.write_text(f'#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} "$@"\n')
    path.chmod(0o755)
    return path
