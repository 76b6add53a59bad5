"""dpo.precision: bf16 autocast over fp32 master weights where the hardware has bf16 units, for every
training stage (dpo, lora, dpo_multitask, s2l); `auto` keys artifacts by what it resolves to, and the
default float32 keeps every key. Refusal where bf16 is emulated: tests/test_bad_inputs.py."""

from __future__ import annotations

import pytest
import torch
from test_artifact_keys import PINNED, planned_keys
from test_pipeline import overrides, run_overrides
from test_s2l import INIT, SKILL_MD

from skillweave import training
from skillweave.core.errors import ConfigError
from skillweave.deltas import load_delta
from skillweave.lora_io import adapter_tensors
from skillweave.models import load_state_dict, native_bf16
from skillweave.training import training_precision

needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="no bf16 units here (no bf16 GPU, no AVX512-BF16 or AMX CPU)")


@pytest.mark.parametrize(
    "setting, native, expected",
    [
        ("float32", True, "float32"),  # an explicit float32 never asks the hardware
        ("float32", False, "float32"),
        ("auto", True, "bfloat16"),
        ("auto", False, "float32"),  # e.g. an AMD EPYC without AVX512-BF16: bf16 would be emulated
        ("bfloat16", True, "bfloat16"),
        ("bfloat16", False, ConfigError),
    ],
)
def test_training_precision_is_bf16_only_where_native(monkeypatch, setting, native, expected):
    monkeypatch.setattr(training, "native_bf16", lambda: native)
    if expected is ConfigError:
        with pytest.raises(ConfigError, match="use dpo.precision=auto"):
            training_precision(setting)
    else:
        assert training_precision(setting) == expected


@pytest.mark.parametrize("native", [True, False])
def test_auto_plans_the_keys_of_the_dtype_it_resolves_to(monkeypatch, tmp_path, native):
    monkeypatch.setattr(training, "native_bf16", lambda: native)
    auto = planned_keys(tmp_path, ["dpo.precision=auto"])
    if native:
        bf16 = planned_keys(tmp_path, ["dpo.precision=bfloat16"])
        assert auto == bf16
        trained = [k for k in auto if k.split("/")[0] in ("dpo", "lora", "dpo_multitask")]
        assert len(trained) == 7 and all(auto[k] != PINNED["default"][k] for k in trained)
    else:
        assert auto == PINNED["default"]  # float32, the default: the keys of before the setting had `auto`


def record_autocast(monkeypatch, trainer_name: str, seen: dict) -> None:
    """Make trl's `trainer_name` record, per run name, its model's attention implementation and the (output
    dtype, weight dtype) of its first linear in every training forward: bf16 outputs of fp32 weights are
    autocast at work."""
    import trl

    base = getattr(trl, trainer_name)

    class Recording(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # the reference log-probs are computed in here, before the hook
            dtypes = seen.setdefault(self.args.run_name.split("-")[0], {self.model.config._attn_implementation})
            linear = next(m for m in self.model.modules() if isinstance(m, torch.nn.Linear))
            linear.register_forward_hook(lambda m, i, out: dtypes.add((out.dtype, m.weight.dtype)))

    monkeypatch.setattr(trl, trainer_name, Recording)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The tiny pipeline's math DPO in fp32 and bf16, and the lora and dpo_multitask baselines in bf16."""
    tmp = tmp_path_factory.mktemp("precision")
    seen: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        record_autocast(mp, "DPOTrainer", seen)
        ov = overrides(tmp, tiny_model_dir, "domains=[math]")
        fp32 = run_overrides([*ov, "pipeline=[generate,filter,dpo]"])
        seen["dpo_fp32"] = seen.pop("dpo")
        bf16 = run_overrides([*ov, "pipeline=[generate,filter,dpo,lora]", "dpo.precision=bfloat16"])
        (bf16["dpo_multitask"],) = run_overrides([*ov, "stage=dpo_multitask", "dpo.precision=bfloat16"]).values()
    return fp32, bf16, seen, ov


@needs_bf16
def test_bf16_dpo_autocasts_and_keeps_an_fp32_delta(runs, tiny_model_dir):
    fp32, bf16, seen, _ = runs
    a, b = fp32["dpo/math"], bf16["dpo/math"]
    assert seen["dpo_fp32"] == {"sdpa", (torch.float32, torch.float32)}
    # bf16 matmuls, fp32 weights; eager attention on a CPU (training.bf16_attention)
    assert seen["dpo"] == {"eager", (torch.bfloat16, torch.float32)}
    assert a.manifest()["metrics"]["precision"] == a.config["dpo"]["precision"] == "float32"
    assert b.manifest()["metrics"]["precision"] == b.config["dpo"]["precision"] == "bfloat16"
    assert a.key != b.key
    da, db = load_delta(a.file("delta")), load_delta(b.file("delta"))
    assert {t.dtype for t in db.values()} == {torch.float32}
    # fp32 master weights: nearly every entry of the bf16 run's delta is below half a bf16 step of its
    # weight, so a bf16 weight would not have moved at all (measured: 97-100% per tensor).
    base = load_state_dict(tiny_model_dir)
    below = moved = 0
    for k, d in db.items():
        half_step = 2.0 ** (torch.floor(torch.log2(base[k].abs().clamp_min(1e-30))) - 8)
        below += int(((d.abs() < half_step) & (d != 0)).sum())
        moved += int((d != 0).sum())
    assert moved > 0.99 * sum(d.numel() for d in db.values()) and below > 0.9 * moved
    # The same two steps from the same seed: the deltas agree to a few percent (measured 3.1%, cosine
    # 0.9995), without being equal (bf16 rounding changes the gradients).
    diff = sum(float((da[k] - db[k]).double().pow(2).sum()) for k in da) ** 0.5
    norm = sum(float(t.double().pow(2).sum()) for t in da.values()) ** 0.5
    assert 0 < diff / norm < 0.1


@needs_bf16
def test_bf16_baselines_record_their_precision(runs):
    _, bf16, seen, _ = runs
    assert seen["lora"] == seen["dpo_multitask"] == {"eager", (torch.bfloat16, torch.float32)}
    lora, multitask = bf16["lora/math"], bf16["dpo_multitask"]
    for ref in (lora, multitask):
        assert ref.manifest()["metrics"]["precision"] == ref.config["dpo"]["precision"] == "bfloat16"
    assert {t.dtype for t in adapter_tensors(lora.file("adapter")).values()} == {torch.float32}
    assert {t.dtype for t in load_delta(multitask.file("delta")).values()} == {torch.float32}


@needs_bf16
def test_a_complete_bf16_artifact_is_read_where_bf16_is_not_native(runs, monkeypatch):
    """The refusal is a start-up check of artifacts about to be trained: a bf16 delta trained on a GPU is
    still merged or evaluated on a CPU without bf16 units; training another one there is refused."""
    _, bf16, _, ov = runs
    monkeypatch.setattr(training, "native_bf16", lambda: False)
    (again,) = run_overrides([*ov, "stage=dpo", "domain=math", "dpo.precision=bfloat16"]).values()
    assert again == bf16["dpo/math"]
    with pytest.raises(ConfigError, match="dpo.precision=bfloat16 needs bf16 units"):
        run_overrides([*ov, "stage=dpo", "domain=math", "dpo.precision=bfloat16", "dpo.max_steps=3"])


@needs_bf16
def test_bf16_s2l_sft_autocasts_over_fp32_adapter_weights(tmp_path, tiny_model_dir, monkeypatch):
    folder = tmp_path / "say_twice_bf16"  # test_s2l's skill under another name: skills register once per process
    folder.mkdir()
    (folder / "SKILL.md").write_text(SKILL_MD.replace("say_twice", "say_twice_bf16"))
    (folder / "__init__.py").write_text(INIT.replace("say_twice", "say_twice_bf16"))
    seen: dict = {}
    record_autocast(monkeypatch, "SFTTrainer", seen)
    ov = ["recipe=tiny", "model=hf_dir", f"model.path={tiny_model_dir}", f"artifacts_root={tmp_path / 'artifacts'}",
          f"skill_dirs=[{folder}]", "skill=say_twice_bf16", "stage=s2l", "s2l.inputs=4", "s2l.samples_per_input=4",
          "s2l.max_new_tokens=24", "s2l.steps=2", "s2l.per_device_batch_size=2", "lora.rank=4", "s2l.teacher=reference",
          "s2l.precision=bfloat16"]
    (ref,) = run_overrides(ov).values()
    assert seen["s2l"] == {"eager", (torch.bfloat16, torch.float32)}
    # bf16 autocast is what s2l keys without a precision meant before the setting (trl's SFT default)
    assert ref.manifest()["metrics"]["precision"] == "bfloat16" and "precision" not in ref.config
    assert {t.dtype for t in adapter_tensors(ref.file("adapter")).values()} == {torch.float32}
