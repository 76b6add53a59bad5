"""Bad input, as a hostile user types it: each case ends in one line that names the setting, before
any model loads or any artifact is made (issue: "every bad input a clear error").

Each row is run as `python -m skillweave` runs it (compose, check, plan everything, run) on the tiny
pipeline's overrides; `tests/test_cli.py` checks the same path's exit status and stderr end to end.
"""

from __future__ import annotations

import shutil

import pytest
from test_pipeline import overrides

from compose import compose_config, hydra_context
from skillweave.app import run
from skillweave.core.compose import replayable
from skillweave.core.errors import SkillweaveError

CASES = [
    # ranges and types of settings, checked when the config is composed
    ("dpo.max_steps=0", "dpo.max_steps must be >= 1"),
    ("dpo.beta=-5", "dpo.beta must be > 0"),
    ("dpo.beta=0", "dpo.beta must be > 0"),
    ("dpo.learning_rate=-1e-5", "dpo.learning_rate must be >= 0"),
    ("dpo.per_device_batch_size=0", "dpo.per_device_batch_size, gradient_accumulation_steps"),
    ("dpo.gradient_accumulation_steps=0", "dpo.per_device_batch_size, gradient_accumulation_steps"),
    ("dpo.max_length=0", "max_length and save_steps must be >= 1"),
    ("dpo.save_steps=0", "max_length and save_steps must be >= 1"),
    ("dpo.warmup_ratio=1.0", "dpo.warmup_ratio must be in [0, 1)"),
    ("dpo.rounds=0", "dpo.rounds must be >= 1"),
    ("dpo.nll_weight=-1", "dpo.nll_weight must be >= 0"),
    ("domain.sampling.top_p=7", "domain.sampling.top_p must be in (0, 1]"),
    ("domain.sampling.top_p=0", "domain.sampling.top_p must be in (0, 1]"),
    ("domain.sampling.batch_size=0", "domain.sampling.num_prompts, batch_size and max_new_tokens must be >= 1"),
    ("domain.sampling.num_prompts=0", "domain.sampling.num_prompts, batch_size and max_new_tokens must be >= 1"),
    ("domain.sampling.max_new_tokens=0", "domain.sampling.num_prompts, batch_size and max_new_tokens must be >= 1"),
    ("domain.sampling.samples_per_prompt=1", "domain.sampling.samples_per_prompt must be >= 2"),
    ("domain.sampling.temperature=0", "domain.sampling.temperature must be > 0"),
    ("filter.min_pairs=0", "filter.min_pairs must be >= 1"),
    ("filter.max_pairs_per_prompt=0", "filter.max_pairs_per_prompt must be >= 1"),
    ("filter.min_margin=-1", "filter.min_margin must be >= 0"),
    ("filter.max_length_ratio=0.5", "filter.max_length_ratio must be >= 1"),
    ("eval.batch_size=0", "eval.max_gen_toks and eval.batch_size must be >= 1"),
    ("eval.max_gen_toks=0", "eval.max_gen_toks and eval.batch_size must be >= 1"),
    ("eval.limit=0", "eval.limit must be >= 1 or null"),
    ("eval.budget_bytes=0", "eval.budget_bytes must be >= 1 or null"),
    ("eval.integer_check_docs=0", "eval.integer_check_docs must be >= 1"),
    ("zip.rank=0", "zip.rank must be >= 1"),
    ("zip.bits=3", "zip.bits must be 8 or 4"),
    ("zip.alpha=2", "zip.alpha must be in [0, 1]"),
    ("lora.rank=0", "lora.rank must be >= 1"),
    ("lora.dropout=1.0", "lora.dropout must be in [0, 1)"),
    ("router.steps=0", "router needs steps >= 1"),
    ("dev.prompts=0", "dev.prompts and dev.batch_size must be >= 1"),
    ("threads=-2", "threads must be >= 0"),
    ("artifacts_root=", "artifacts_root is empty"),
    ("+dpo.lr=1", "dpo.lr: not a setting"),
    ("+zip.rnk=4", "zip.rnk (did you mean zip.rank?): not a setting"),
    ("model.path=", "model.path is empty"),
    ("model.compiled_decode=maybe", "model.compiled_decode=maybe: not one of auto, on, off"),
    # registry-backed names, checked at start-up with did-you-mean
    ("stage=dpoo", "stage=dpoo: unknown stage 'dpoo'. Did you mean 'dpo'?"),
    ("pipeline=[generate,filtr]", "pipeline=filtr: unknown stage 'filtr'. Did you mean 'filter'?"),
    ("eval.configurations=[]", "eval.configurations=[] compares nothing"),
    ("eval.configurations=[base,skilweave]", "eval.configurations=skilweave: unknown eval configuration"),
    ("eval.compare_to=[bas]", "eval.compare_to=bas: unknown eval configuration"),
    ("domains=[]", "domains=[] covers nothing"),
    ("domains=[math,mth]", "domains=mth: unknown domain"),
    # names read when the whole graph is planned, before anything runs
    ("merge.method=tie", "merge.method=tie: not supported. Did you mean 'ties'?"),
    ("zip.smoothing=smoothquant2", "zip.smoothing=smoothquant2: unknown zip smoothing"),
    ("zip.rotation=hadamrd", "zip.rotation=hadamrd: unknown zip rotation 'hadamrd'. Did you mean 'hadamard'?"),
    ("domain.prompt_source.name=test_short_prompt", "domain.prompt_source.name=test_short_prompt: unknown prompt source"),
    ("+domain.prompt_source.kwargs.level=3", "domain.prompt_source.kwargs={'level': 3}: got an unexpected keyword argument 'level'"),
    ("domain.rules=/no/such/rules.yaml", "/no/such/rules.yaml: no rule set for domain"),
    ("domain.eval_task=skillweave_mth", "domain.eval_task=skillweave_mth: unknown eval task 'skillweave_mth'. Did you mean 'skillweave_math'?"),
    ("model.path=/no/such/model", "model.path=/no/such/model does not exist"),
    ("eval.configurations=[base,external]", "eval configuration `external` needs eval.external_model"),
    ("eval.external_model=/no/such/model", "eval.external_model=/no/such/model does not exist"),
    ("dpo.deepspeed=zero5", "dpo.deepspeed=zero5 is neither one of"),
]


def failure(tmp_path, model_dir, *extra: str) -> str:
    ov = overrides(tmp_path, model_dir, *extra)
    with hydra_context(), pytest.raises(SkillweaveError) as info:
        run(compose_config(ov), replayable(ov), compose_config)
    assert not list((tmp_path / "artifacts").rglob("manifest.json"))  # nothing was made
    return str(info.value)


@pytest.mark.parametrize("override, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_setting(tmp_path, tiny_model_dir, override, words):
    extra = [override]
    if override.startswith("eval.external_model"):
        extra.append("eval.configurations=[base,external]")
    message = failure(tmp_path, tiny_model_dir, *extra)
    assert words in message and "\n" not in message


@pytest.mark.parametrize(
    "damage, words",
    [
        ("config", "config.json: unreadable model config"),
        ("weights", "unreadable weights"),
        ("no_config", "has no config.json: it is not a Hugging Face model directory"),
    ],
)
def test_a_damaged_model_directory_is_one_line(tmp_path, tiny_model_dir, damage, words):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    if damage == "config":
        (model / "config.json").write_text("{not json")
    elif damage == "weights":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[: len(data) // 3])
    else:
        (model / "config.json").unlink()
    message = failure(tmp_path, model)
    assert words in message and "\n" not in message


@pytest.mark.parametrize("kind", ["file", "read_only"])
def test_an_artifacts_root_that_cannot_hold_artifacts_is_one_line(tmp_path, tiny_model_dir, kind, monkeypatch):
    root = tmp_path / "store"
    if kind == "file":
        root.write_text("not a directory")
    else:  # root ignores permissions: make every write fail as on a read-only mount
        import pathlib

        real = pathlib.Path.write_bytes
        monkeypatch.setattr(pathlib.Path, "write_bytes",
                            lambda self, data: (_ for _ in ()).throw(OSError(30, "Read-only file system")) if ".write-probe" in self.name else real(self, data))
    message = failure(tmp_path, tiny_model_dir, f"artifacts_root={root}")
    assert f"artifacts_root={root}: cannot write there" in message and "choose a writable directory" in message


def test_bf16_training_without_bf16_units_is_one_line(tmp_path, tiny_model_dir, monkeypatch):
    """A machine with neither a GPU nor a CPU with AVX512-BF16 or AMX: bf16 would be emulated there."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    message = failure(tmp_path, tiny_model_dir, "dpo.precision=bfloat16")
    assert message.startswith("dpo.precision=bfloat16 needs bf16 units") and "\n" not in message
    assert "use dpo.precision=auto (bf16 where native) or float32" in message
