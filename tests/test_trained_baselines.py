"""The trained baselines on the tiny pipeline: multi-task DPO (one monolith on every domain's pairs)
and LoRA per domain (PEFT), as stages and as eval configurations."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from compose import compose_config, hydra_context
from test_pipeline import overrides, run_overrides

from skillweave.config import LoRAConfig
from skillweave.core.engine import Context, plan
from skillweave.deltas import add_delta, load_delta, param_bytes
from skillweave.lora_io import adapter_tensors, load_lora, lora_dense_delta
from skillweave.models import load_model, load_state_dict, model_fingerprint

DOMAINS = ("math", "code")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """stage=all with only the trained baselines evaluated: their stages run as the eval's inputs.

    lora.learning_rate is large so that two steps move the adapter well away from zero (B starts at 0).
    """
    tmp = tmp_path_factory.mktemp("trained")
    ov = overrides(
        tmp, tiny_model_dir, "domains=[math,code]", "eval.configurations=[base,multitask,lora]", "lora.learning_rate=1e-2"
    )
    return tmp, ov, run_overrides(ov)


def test_stage_all_produces_the_baselines_for_the_eval(pipeline):
    _, _, refs = pipeline
    assert {"eval-input/dpo_multitask", "eval-input/lora_math", "eval-input/lora_code"} <= set(refs)
    assert all(ref.complete for ref in refs.values())


def test_multitask_trains_on_every_domains_pairs(pipeline, tiny_model_dir):
    _, _, refs = pipeline
    metrics = refs["eval-input/dpo_multitask"].manifest()["metrics"]
    per_domain = {d: json.loads((refs[f"filter/{d}"].path / "report.json").read_text())["pairs"] for d in DOMAINS}
    assert metrics["pairs_per_domain"] == per_domain
    assert metrics["pairs"] == sum(per_domain.values())
    # steps=sum (the default): the per-domain runs' steps together (recipe tiny: 2 each)
    assert metrics["steps"] == sum(refs[f"dpo/{d}"].manifest()["metrics"]["steps"] for d in DOMAINS) == 4
    delta = load_delta(refs["eval-input/dpo_multitask"].file("delta"), backbone_fingerprint=model_fingerprint(tiny_model_dir))
    assert set(delta) == set(load_state_dict(tiny_model_dir))
    assert metrics["relative_weight_change"] > 0


@pytest.mark.parametrize(
    "rule, steps",
    [
        ("sum", 3 + 3),  # the compute of the two per-domain runs together
        ("per_domain", 3),  # the compute of one per-domain run
    ],
)
def test_multitask_steps_follow_the_fairness_rule(pipeline, rule, steps):
    _, ov, _ = pipeline
    with hydra_context():
        extra = [*ov, "dpo.max_steps=3", f"dpo_multitask.steps={rule}"]
        ctx = Context(cfg=compose_config(extra), overrides=tuple(extra), composer=compose_config)
        ref, inputs = plan(ctx, "dpo_multitask")
    assert ref.config["dpo"]["max_steps"] == steps
    assert set(inputs) == {"pairs_math", "pairs_code"} and ref.label == "all"


def test_with_online_rounds_the_baselines_train_every_rounds_pairs(pipeline):
    _, ov, _ = pipeline
    with hydra_context():
        extra = [*ov, "dpo.rounds=2", "dpo.max_steps=3"]
        ctx = Context(cfg=compose_config(extra), overrides=tuple(extra), composer=compose_config)
        multitask, mt_inputs = plan(ctx, "dpo_multitask")
        lora, lora_inputs = plan(ctx, "lora", "math")
        round0 = ctx.at_round(0)
        assert lora_inputs["pairs"].ref == plan(round0, "filter", "math")[0] == mt_inputs["pairs_math"].ref
        assert lora_inputs["pairs_round1"].ref == plan(ctx, "filter", "math")[0] == mt_inputs["pairs_math_round1"].ref
    assert set(lora_inputs) == {"pairs", "pairs_round1"}
    assert set(mt_inputs) == {"pairs_math", "pairs_math_round1", "pairs_code", "pairs_code_round1"}
    assert lora.config["dpo"]["max_steps"] == 2 * 3  # the steps of both rounds of the per-domain run
    assert multitask.config["dpo"]["max_steps"] == 2 * 2 * 3  # both domains' runs, both rounds


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_adapter_is_the_backbone_plus_its_dense_delta(pipeline, tiny_model_dir):
    _, _, refs = pipeline
    adapter = refs["eval-input/lora_math"].file("adapter")
    fp = model_fingerprint(tiny_model_dir)
    backbone = load_model(tiny_model_dir)
    linears = {n for n, m in backbone.named_modules() if isinstance(m, torch.nn.Linear) and m is not backbone.lm_head}
    base_out = logits(backbone)
    adapted = load_lora(load_model(tiny_model_dir), adapter, fp)  # peft's own loading and forward
    dense = lora_dense_delta(adapter)
    assert set(dense) == {f"{n}.weight" for n in linears}  # every block linear, not the head
    merged = add_delta(load_model(tiny_model_dir), dense)  # W + (alpha / r) B A
    out = logits(adapted)
    assert float((out - base_out).abs().max()) > 1e-3  # the adapter moved the outputs
    torch.testing.assert_close(out, logits(merged), rtol=0, atol=1e-5)
    assert refs["eval-input/lora_math"].manifest()["metrics"]["adapted_layers"] == len(linears)


def test_eval_reports_bytes_of_the_tensors_held(pipeline, tiny_model_dir):
    _, _, refs = pipeline
    results = json.loads((refs["eval"].path / "results.json").read_text())
    rows = {r["name"]: r for r in results["configurations"]}
    assert list(rows) == ["base", "multitask", "lora"]
    base = param_bytes(load_model(tiny_model_dir))
    adapters = {
        d: sum(t.numel() * t.element_size() for t in adapter_tensors(refs[f"eval-input/lora_{d}"].file("adapter")).values())
        for d in DOMAINS
    }
    assert rows["base"]["bytes"] == rows["multitask"]["bytes"] == base
    assert rows["lora"]["details"]["adapter_bytes"] == adapters
    assert rows["lora"]["bytes"] == base + sum(adapters.values())
    for r in rows.values():
        assert set(r["scores"]) == set(DOMAINS) and all(n == 2 for n in r["n"].values())


@pytest.mark.parametrize("adapters,label", [("lora", "vllm 0.0+fake + LoRA"), ("folded", "vllm 0.0+fake, folded")])
def test_the_lora_row_is_served_as_the_backbone_with_each_adapter(pipeline, fake_vllm_python, adapters, label):
    """eval.backend=vllm: one engine on the backbone, each domain's PEFT adapter a LoRA request, or one engine
    per domain with its adapter folded in; the fake engine decodes as transformers and PEFT do, so every
    answer is the HF row's."""
    _, ov, refs = pipeline
    (vllm,) = run_overrides([*ov, "stage=eval", "eval.configurations=[base,lora]", "eval.backend=vllm",
                             f"eval.vllm_adapters={adapters}", f"model.vllm_python={fake_vllm_python}",
                             "model.generation_backend=hf"]).values()
    rows = {r["name"]: r for r in json.loads(vllm.file("results").read_text())["configurations"]}
    assert rows["lora"]["details"]["served_by"] == {d: label for d in DOMAINS}
    assert rows["base"]["details"]["served_by"] == {d: "vllm 0.0+fake" for d in DOMAINS}
    for d in DOMAINS:  # (the tiny model's answers here are mostly empty: test_engines checks answers that differ)
        served, hf = (r.path / "samples" / f"lora-{d}.jsonl" for r in (vllm, refs["eval"]))
        assert served.read_text() == hf.read_text()
    assert not list(vllm.path.parent.parent.rglob(".vllm-*"))


def test_a_lora_adapter_of_another_backbone_is_refused(pipeline, tmp_path, tiny_tokenizer):
    from conftest import build_tiny_model

    _, _, refs = pipeline
    other = tmp_path / "other"
    build_tiny_model(tiny_tokenizer, seed=1, train_steps=1).save_pretrained(other)
    with pytest.raises(ValueError, match="LoRA adapter of backbone .* not of this backbone .*rerun the lora stage"):
        load_lora(load_model(other), refs["eval-input/lora_math"].file("adapter"), model_fingerprint(other))


def test_a_killed_lora_resumes_from_its_checkpoint(pipeline, monkeypatch, tmp_path):
    import trl
    from transformers import TrainerCallback

    _, ov, refs = pipeline
    # The checkpoint interval keys nothing: the run is made again in a copy of the store without the adapter.
    original = refs["eval-input/lora_math"]
    root = tmp_path / "artifacts"
    shutil.copytree(original.root, root)
    shutil.rmtree(root / original.path.relative_to(original.root))
    ov = [o for o in ov if not o.startswith("artifacts_root=")] + [f"artifacts_root={root}", "stage=lora", "domain=math",
                                                                  "dpo.save_steps=1"]

    class KillAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise KeyboardInterrupt("preempted")

    class PreemptedDPOTrainer(trl.DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAfterFirstCheckpoint())

    monkeypatch.setattr(trl, "DPOTrainer", PreemptedDPOTrainer)
    with pytest.raises(KeyboardInterrupt):
        run_overrides(ov)
    monkeypatch.undo()
    assert (root / original.path.relative_to(original.root) / "checkpoints" / "checkpoint-1").is_dir()  # resumed from
    (ref,) = run_overrides(ov).values()
    assert ref.key == original.key and ref.complete and ref.manifest()["metrics"]["steps"] == 2
    assert sorted(p.name for p in ref.path.iterdir() if not p.name.startswith(".")) == ["adapter", "config.json", "manifest.json"]
    # The resumed adapter is the uninterrupted one.
    uninterrupted = adapter_tensors(original.file("adapter"))
    resumed = adapter_tensors(ref.file("adapter"))
    assert set(resumed) == set(uninterrupted)
    for k, v in resumed.items():
        torch.testing.assert_close(v, uninterrupted[k], rtol=1e-4, atol=1e-7)


def test_the_baselines_train_under_multi_process_launches(monkeypatch):
    from skillweave.core.engine import STAGES

    # dpo_multitask: rank 0 writes the delta, as in stage dpo; lora: trainer.save_model gathers the adapter
    assert STAGES.get("dpo_multitask").distributed and STAGES.get("lora").distributed


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("rank", 0, "lora.rank"),  # no adapter at all
        ("alpha", 0, "lora.alpha"),  # a zero update whatever is learned
        ("dropout", 1.0, "lora.dropout"),  # drops every input
        ("target_modules", [], "adapts nothing"),  # [] is not "all block linears" (that is null)
    ],
)
def test_lora_settings_are_checked(field, value, words):
    with pytest.raises(ValueError, match=words):
        LoRAConfig(**{field: value})
