"""Compiled decoding (skillweave.decoding): which setting compiles, the fallback when inductor cannot
build, and greedy tokens equal to the eager path's, with a skillpack's integer path attached."""

from __future__ import annotations

import logging

import pytest
import torch

from skillweave import decoding
from skillweave.config import CompiledDecode, ModelConfig, SamplingConfig
from skillweave.core.errors import ConfigError
from skillweave.models import load_model, load_tokenizer
from skillweave.sampling import sample_batch

CPU = torch.device("cpu")
PROMPTS = [{"id": i, "prompt": p, "meta": {}} for i, p in enumerate(
    ["one two three", "def add return", "yes no yes no the a", "seven eight nine zero"]
)]


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    """Each test starts as a new process would: no earlier compile failure, no warning said yet."""
    monkeypatch.setattr(decoding, "_failure", None)
    monkeypatch.setattr(decoding, "_warned", set())


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def no_compiler(monkeypatch):
    from torch._inductor import cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    def missing():
        raise InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)


@pytest.mark.parametrize(
    "setting, steps, compiler, expected",
    [
        ("off", 10**6, True, False),  # off never compiles, however long the decode
        ("on", 1, True, True),  # on compiles even one step
        ("auto", decoding.AUTO_MIN_STEPS - 1, True, False),  # too short to pay for the compile
        ("auto", decoding.AUTO_MIN_STEPS, True, True),
        ("auto", 10**6, False, False),  # no C++ compiler: inductor cannot build on CPU
        ("on", 1, False, False),  # ... whatever the setting says
    ],
)
def test_which_setting_compiles(monkeypatch, setting, steps, compiler, expected):
    if not compiler:
        no_compiler(monkeypatch)
    assert decoding.use_compiled_decode(setting, CPU, steps) is expected


def test_on_without_a_compiler_warns_once(monkeypatch, caplog):
    no_compiler(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="skillweave.decoding"):
        for _ in range(3):
            assert not decoding.use_compiled_decode("on", CPU, 10)
        assert not decoding.use_compiled_decode("auto", CPU, 10**6)  # auto falls back silently
    assert len(caplog.records) == 1
    assert "inductor finds no C++ compiler" in caplog.text and "decoding eagerly" in caplog.text
    assert "\n" not in caplog.records[0].getMessage()


def test_an_unsupported_device_is_named():
    assert decoding.unavailable(torch.device("meta")) == "no inductor backend for device meta"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("auto", CompiledDecode.auto),
        ("on", CompiledDecode.on),
        ("off", CompiledDecode.off),
        (True, CompiledDecode.on),  # YAML reads a bare `on` as true...
        (False, CompiledDecode.off),  # ... and `off` as false
    ],
)
def test_setting_values(value, expected):
    assert ModelConfig(name="m", compiled_decode=value).compiled_decode is expected


@pytest.mark.parametrize("value", ["maybe", "ON", 1.5])
def test_a_bad_setting_is_one_line_naming_it(value):
    with pytest.raises(ConfigError) as info:
        ModelConfig(name="m", compiled_decode=value)
    assert str(info.value) == f"model.compiled_decode={value}: not one of auto, on, off"


def test_pad_rows_repeats_the_last_row():
    ids = torch.tensor([[0, 1, 2], [3, 4, 5]])
    padded = decoding.pad_rows({"input_ids": ids, "attention_mask": ids > 0}, 4)
    assert padded["input_ids"].tolist() == [[0, 1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5]]
    assert padded["attention_mask"].tolist() == [[False, True, True], [True] * 3, [True] * 3, [True] * 3]
    assert decoding.pad_rows({"input_ids": ids}, 2)["input_ids"] is ids  # a full batch is left as is


@pytest.mark.parametrize("length, cache", [(1, 64), (64, 64), (65, 128), (700, 704)])
def test_static_cache_lengths_are_bucketed(length, cache):
    kwargs = decoding.static_cache_kwargs(length)
    assert kwargs["max_cache_len"] == cache and kwargs["cache_implementation"] == "static"
    assert (kwargs["compile_config"].dynamic, kwargs["compile_config"]._compile_all_devices) == (False, True)


@pytest.mark.parametrize("before, chosen", [(None, False), ("torch's default", False), ("/my/cache", True)])
def test_compiled_kernels_are_kept_in_the_user_cache(monkeypatch, tmp_path, before, chosen):
    """Unless TORCHINDUCTOR_CACHE_DIR was chosen: torch sets it to its /tmp default on import."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("SKILLWEAVE_CACHE", str(tmp_path))
    value = {None: None, "torch's default": default_cache_dir()}.get(before, before)
    if value is None:
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    else:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", value)
    decoding.use_inductor_cache_dir()
    assert decoding.os.environ["TORCHINDUCTOR_CACHE_DIR"] == (value if chosen else str(tmp_path / "inductor"))


def greedy(model, tok, compiled: bool, rows: int = 2) -> list[str]:
    sampling = SamplingConfig(max_new_tokens=12)
    out = []
    for i in range(0, len(PROMPTS), rows):
        out += [r["response"] for r in sample_batch(model, tok, PROMPTS[i : i + rows], sampling, seed=0, greedy=True,
                                                    compiled=compiled, rows=rows)]
    return out


def test_a_failing_compile_falls_back_to_eager_with_one_line(monkeypatch, caplog, tiny_model_dir, one_thread):
    from transformers import CompileConfig

    calls = []

    def broken_backend(graph, example_inputs, **options):  # as inductor fails without a C++ compiler
        calls.append(1)
        raise RuntimeError("no C++ compiler\nsecond line")

    def config():
        c = CompileConfig(backend=broken_backend, fullgraph=True, dynamic=False)
        c._compile_all_devices = True
        return c

    monkeypatch.setattr(decoding, "compile_config", config)
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    tok.padding_side = "left"
    sampling = SamplingConfig(max_new_tokens=8)
    eager_sampled = sample_batch(model, tok, PROMPTS[:2], sampling, seed=3)
    eager = greedy(model, tok, compiled=False)
    with caplog.at_level(logging.WARNING, logger="skillweave.decoding"):
        # redone eagerly from the random state the call started with: the same samples
        assert sample_batch(model, tok, PROMPTS[:2], sampling, seed=3, compiled=True) == eager_sampled
        assert greedy(model, tok, compiled=True) == eager  # later batches answered eagerly too
    assert len(calls) == 1  # and did not try to compile again
    assert [r.getMessage() for r in caplog.records] == [
        "compiled decoding failed (RuntimeError: no C++ compiler): decoding eagerly "
        "(model.compiled_decode=off silences this)"
    ]
    assert not decoding.use_compiled_decode("on", CPU, 10)  # the rest of the process decodes eagerly


def test_compiled_greedy_equals_eager_with_an_int_path_skillpack(tiny_model_dir, one_thread):
    """One compiled graph serves both batches (the short last one is padded), and its greedy tokens
    are the eager path's, through a skillpack's integer path (~20-60 s: one compile of a tiny model)."""
    from torch._dynamo.utils import counters

    from skillweave.zip import attach_skillpack
    from skillweave.zip.compress import block_linear_names, compress_residual

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    tok.padding_side = "left"
    g = torch.Generator().manual_seed(0)
    residual = {k: 0.05 * p.std() * torch.randn(p.shape, generator=g) for k, p in model.state_dict().items()
                if k.endswith("proj.weight")}
    sp = compress_residual(residual, block_linear_names(model), 8, 8, "math", "fp", smoothing="none")
    attach_skillpack(model, sp, int_mm=True)
    eager = greedy(model, tok, compiled=False, rows=3)  # batches of 3 and 1
    graphs = counters["stats"]["unique_graphs"]
    assert greedy(model, tok, compiled=True, rows=3) == eager
    assert decoding.unavailable(CPU) is None  # it did compile
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert any(a.strip() for a in eager)  # the tiny model answers something


def test_a_short_sampled_batch_keeps_its_samples(monkeypatch, tiny_model_dir, one_thread):
    """Sampling is not padded (padding rows would draw random numbers too): compiled, a short batch
    samples what eager decoding samples. Dynamo's `eager` backend stands in for inductor here."""
    from transformers import CompileConfig

    def config():
        c = CompileConfig(backend="eager", fullgraph=True, dynamic=False, mode=None)
        c._compile_all_devices = True
        return c

    monkeypatch.setattr(decoding, "compile_config", config)
    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    tok.padding_side = "left"
    sampling = SamplingConfig(max_new_tokens=8, samples_per_prompt=3)
    eager = sample_batch(model, tok, PROMPTS[:3], sampling, seed=5)
    compiled = sample_batch(model, tok, PROMPTS[:3], sampling, seed=5, compiled=True, rows=4)
    assert decoding.unavailable(CPU) is None and len(compiled) == 9
    assert compiled == eager
