"""CAT composition (skillweave/composition.py) on the tiny Llama: learned weights recover a known mixture,
the composed modules compute what they claim, skillpacks and PEFT adapters are served as attached, and the
saved artifact refuses what it was not trained with."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_zip import compress_with_embedding, embedding_residual, tiny_model

from skillweave.composition import (
    ComposedEmbedding,
    ComposedLinear,
    ComposedParams,
    LowRankSkill,
    attach_composition,
    detach_composition,
    from_peft_adapter,
    from_skillpack,
    load_composition,
    merged_delta,
    save_composition,
    train_alphas,
)
from skillweave.core.errors import ArtifactError, DataError
from skillweave.deltas import add_delta
from skillweave.lora_io import STAMP, lora_dense_delta
from skillweave.zip import attach_skillpack, block_linear_names, compress_residual, detach_skillpack
from skillweave.zip.export import export_skillpack
from skillweave.zip.smoothing import collect_channel_stats

# Recovery: the target is the composition itself at the true weights, so the KL is 0 there and only the
# optimiser's error is left: measured <= 1e-4 after 200 Adam steps (lr 0.05); 0.01 leaves room for other
# BLAS builds while still telling every weight from its start (1.0) and from its neighbours.
RECOVERY_STEPS = 200
RECOVERY_TOL = 0.01


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads on the shared 2-core box (see test_zip.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_skill(model, name: str, seed: int, modules=None, rank: int = 4, size: float = 0.3, fingerprint="fp-a"):
    """Random rank-`rank` factors on the block linears (all, or `modules`), each delta `size` times its
    weight's norm: large enough that every weight moves the logits."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for m in sorted(modules or block_linear_names(model)):
        w = model.get_submodule(m).weight.detach()
        a, b = torch.randn(w.shape[0], rank, generator=g), torch.randn(rank, w.shape[1], generator=g)
        c = (size * w.norm() / (a @ b).norm()).sqrt()
        factors[m] = (c * a, c * b)
    return LowRankSkill(name, "skillpack", fingerprint, factors)


def ids_of(seed: int, n: int = 32, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def residual_with_norms(model) -> dict[str, torch.Tensor]:
    """test_zip's residual (rank-4 embedding part, tied) plus norm residuals, which a skillpack keeps dense
    (embedding_residual leaves them zero: the norms' std is 0)."""
    res = embedding_residual(model, tied=True)
    g = torch.Generator().manual_seed(17)
    return res | {k: 0.05 * torch.randn(t.shape, generator=g) for k, t in res.items() if t.ndim == 1}


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


# ---- (a) recovery of a known mixture


def test_learned_weights_recover_a_known_per_module_mixture():
    model = tiny_model()
    skills = [random_skill(model, "s1", 1), random_skill(model, "s2", 2)]
    g = torch.Generator().manual_seed(3)
    # a different true pair per module, in [0.1, 0.9]: recovering it needs every weight, not a global pair
    true = {m: 0.1 + 0.8 * torch.rand(2, generator=g) for m in sorted(block_linear_names(model))}
    ids = ids_of(4)
    attach_composition(model, skills, true)
    target = logits(model, ids)
    detach_composition(model)
    batches = [{"input_ids": ids[i : i + 8], "target_logits": target[i : i + 8]} for i in range(0, 32, 8)]
    composition = attach_composition(model, skills)  # CAT's start: 1.0 everywhere
    metrics = train_alphas(model, composition, batches, RECOVERY_STEPS, lr=0.05, seed=0)
    learned = composition.alphas()
    errors = {m: (learned[m] - true[m]).abs().max().item() for m in true}
    assert max(errors.values()) < RECOVERY_TOL, errors
    assert metrics["loss_before"] > 1e-4 and metrics["loss_after"] < 1e-7, metrics
    assert metrics["curve"][0] > metrics["curve"][-1] and len(metrics["curve"]) == 10


def test_shared_weights_recover_a_global_mixture_with_k_numbers():
    model = tiny_model()
    skills = [random_skill(model, "s1", 1), random_skill(model, "s2", 2)]
    true = torch.tensor([0.3, 0.7])
    ids = ids_of(4)
    attach_composition(model, skills, true)
    target = logits(model, ids)
    detach_composition(model)
    batches = [{"input_ids": ids[i : i + 8], "target_logits": target[i : i + 8]} for i in range(0, 32, 8)]
    composition = attach_composition(model, skills, per_module=False)
    assert len(composition.parameters()) == 1 and len(composition.alpha) == len(block_linear_names(model))
    train_alphas(model, composition, batches, RECOVERY_STEPS, lr=0.05, seed=0)
    learned = composition.alphas()
    assert all(torch.equal(a, learned[next(iter(learned))]) for a in learned.values())  # still one pair
    assert (next(iter(learned.values())) - true).abs().max().item() < RECOVERY_TOL
    with pytest.raises(ValueError, match="the same for all"):
        detach_composition(model)
        attach_composition(model, skills, {m: torch.rand(2) for m in learned}, per_module=False)


def test_training_is_deterministic_and_moves_only_the_alphas():
    model = tiny_model()
    assert all(p.requires_grad for p in model.parameters())
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    skills = [random_skill(model, "s1", 1), random_skill(model, "s2", 2, modules=["model.layers.0.mlp.up_proj"])]
    ids = ids_of(5, n=16)
    labels = ids.masked_fill(torch.arange(16) < 6, -100)  # the first 6 tokens are the prompt
    batches = [
        {
            "input_ids": ids[i : i + 4],
            "attention_mask": torch.ones(4, 16, dtype=torch.long),
            "labels": labels[i : i + 4],
        }
        for i in range(0, 16, 4)
    ]
    model.train()  # train_alphas runs in eval mode (no dropout) and gives the mode back
    runs = []
    for seed in (7, 7, 8):
        composition = attach_composition(model, skills)
        named = dict(model.named_parameters())
        alpha_names = {n for n, p in named.items() if any(p is a for a in composition.parameters())}
        assert alpha_names == {n for n in named if n.endswith(".alpha")} and len(alpha_names) == 14
        metrics = train_alphas(model, composition, batches, 8, lr=0.05, seed=seed)
        assert all(p.grad is None and p.requires_grad for n, p in model.named_parameters() if n not in alpha_names)
        assert all(a.grad is not None for a in composition.parameters())
        runs.append(composition.alphas())
        # s2 has no factors in most modules: its weight there gets no gradient and stays at 1.0
        assert runs[-1]["model.layers.1.mlp.up_proj"][1] == 1.0 and runs[-1]["model.layers.0.mlp.up_proj"][1] != 1.0
        detach_composition(model)
    assert all(torch.equal(runs[0][m], runs[1][m]) for m in runs[0])
    assert not all(torch.equal(runs[0][m], runs[2][m]) for m in runs[0])  # another seed, another batch order
    assert all(torch.equal(v, backbone[k]) for k, v in model.state_dict().items())
    assert model.training is True and metrics["steps"] == 8


def test_the_lm_loss_counts_only_answer_tokens():
    """loss_before with labels is the causal LM loss HF computes on the same labels (-100 on the prompt)."""
    model = tiny_model()
    ids = ids_of(6, n=4)
    labels = ids.masked_fill(torch.arange(16) < 9, -100)
    composition = attach_composition(model, [random_skill(model, "s1", 1)])
    with torch.no_grad():
        want = model(input_ids=ids, labels=labels).loss.item()
    metrics = train_alphas(model, composition, [{"input_ids": ids, "labels": labels}], 1)
    assert metrics["loss_before"] == pytest.approx(want, rel=1e-5)
    with pytest.raises(DataError, match="no answer tokens"):
        train_alphas(model, composition, [{"input_ids": ids, "labels": torch.full_like(ids, -100)}], 1)


# ---- (b) attach / detach


def test_detach_restores_the_backbone_exactly_and_nothing_is_copied():
    model = tiny_model(tied=True)
    sp = compress_with_embedding(model, residual_with_norms(model), True, 8)
    assert len(sp.dense) == 5
    skills = [from_skillpack(sp), random_skill(model, "s2", 2)]
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    ids = ids_of(7, n=2)
    before = logits(model, ids)
    attach_composition(model, skills, [0.5, 2.0], expected_fingerprint="fp-a")
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert isinstance(q, ComposedLinear) and q.base is modules["model.layers.0.self_attn.q_proj"]
    assert (
        isinstance(model.model.embed_tokens, ComposedEmbedding)
        and model.model.embed_tokens.base is modules["model.embed_tokens"]
    )
    assert (
        isinstance(model.lm_head, ComposedLinear) and model.lm_head.base.weight is params["model.embed_tokens.weight"]
    )
    assert isinstance(model.model.norm, ComposedParams)  # only the skillpack's dense residual moves it
    assert model.get_input_embeddings().weight is params["model.embed_tokens.weight"]
    assert not torch.allclose(logits(model, ids), before, atol=1e-3)
    with pytest.raises(ArtifactError, match="already attached"):
        attach_composition(model, skills)
    detach_composition(model)
    assert torch.equal(logits(model, ids), before)
    assert all(m is modules[n] for n, m in model.named_modules())
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    with pytest.raises(ArtifactError, match="no composition is attached"):
        detach_composition(model)
    attach_skillpack(model, sp)
    with pytest.raises(ArtifactError, match="already attached"):
        attach_composition(model, skills)
    detach_skillpack(model)


def test_attach_refuses_skills_of_other_backbones_before_any_change():
    model = tiny_model()
    a, b = random_skill(model, "s1", 1), random_skill(model, "s2", 2, fingerprint="fp-b")
    with pytest.raises(ArtifactError, match="different backbones"):
        attach_composition(model, [a, b])
    with pytest.raises(ArtifactError, match="skill 's1' was made for backbone fp-a, this model is fp-c"):
        attach_composition(model, [a], expected_fingerprint="fp-c")
    other = random_skill(tiny_model(hidden=32), "small", 3)
    with pytest.raises(
        ArtifactError, match=r"factors .* of model.layers.0.mlp.down_proj do not make its \(64, 128\) weight"
    ):
        attach_composition(model, [a, other])
    with pytest.raises(ValueError, match="2 weights per module"):
        attach_composition(model, [a, random_skill(model, "s3", 3)], [1.0, 1.0, 1.0])
    assert not any(isinstance(m, (ComposedLinear, ComposedParams)) for m in model.modules())


# ---- (c) the composed modules' numbers


def test_composed_linear_adds_the_weighted_dense_deltas_and_biases():
    g = torch.Generator().manual_seed(8)
    base = torch.nn.Linear(16, 24)
    factors = [
        (torch.randn(24, 3, generator=g), torch.randn(3, 16, generator=g)),
        None,
        (torch.randn(24, 5, generator=g), torch.randn(5, 16, generator=g)),
    ]
    dense = [{"bias": torch.randn(24, generator=g)}, {}, {"bias": torch.randn(24, generator=g)}]
    alpha = torch.nn.Parameter(torch.tensor([0.7, 5.0, -0.4]))
    layer = ComposedLinear(base, factors, alpha, dense)
    x = torch.randn(2, 7, 16, generator=g)
    want = x @ (base.weight + 0.7 * factors[0][0] @ factors[0][1] - 0.4 * factors[2][0] @ factors[2][1]).T
    want = want + base.bias + 0.7 * dense[0]["bias"] - 0.4 * dense[2]["bias"]
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    assert {n for n, _ in layer.named_parameters()} == {"base.weight", "base.bias", "alpha"}  # factors are buffers
    emb = torch.nn.Embedding(10, 16)
    table = [
        (torch.randn(10, 2, generator=g), torch.randn(2, 16, generator=g)),
        (torch.randn(10, 4, generator=g), torch.randn(4, 16, generator=g)),
    ]
    ids = torch.tensor([[3, 0, 9]])
    want = (emb.weight + 1.5 * table[0][0] @ table[0][1] + 0.25 * table[1][0] @ table[1][1])[ids]
    torch.testing.assert_close(
        ComposedEmbedding(emb, table, torch.nn.Parameter(torch.tensor([1.5, 0.25])))(ids), want, rtol=1e-5, atol=1e-5
    )


def test_a_composition_serves_its_merged_delta():
    """Composed model == backbone + merged_delta, with skills on overlapping subsets of modules, dense
    norm residuals and per-module weights."""
    model = tiny_model()
    half = sorted(block_linear_names(model))[::2]
    s2 = random_skill(model, "s2", 2, modules=half)
    s2.dense = {
        "model.norm.weight": 0.1 * torch.randn(64),
        "model.layers.1.input_layernorm.weight": 0.1 * torch.randn(64),
    }
    skills = [random_skill(model, "s1", 1), s2]
    g = torch.Generator().manual_seed(9)
    alphas = {
        m: torch.randn(2, generator=g)
        for m in sorted(block_linear_names(model)) + ["model.norm", "model.layers.1.input_layernorm"]
    }
    ids = ids_of(10, n=2)
    merged = add_delta(copy.deepcopy(model), merged_delta(attach_composition(model, skills, alphas)))
    composed = logits(model, ids)
    want = logits(merged, ids)
    assert ((composed - want).norm() / want.norm()).item() < 1e-5
    assert (want - logits(tiny_model(), ids)).norm() > 0.1 * want.norm()  # the skills do move the logits
    delta = merged_delta(attach_composition(tiny_model(), skills, alphas))  # the dense residual: alpha_2 d
    torch.testing.assert_close(delta["model.norm.weight"], alphas["model.norm"][1] * s2.dense["model.norm.weight"])


# ---- (d) the low-rank views of skillpacks and PEFT adapters


@pytest.mark.parametrize("bits", [8, 4])
def test_a_skillpacks_view_serves_what_attach_skillpack_serves(bits):
    """Smoothing, rotation, INT4, the embedding's factors with tied weights and the dense norms: one
    skillpack composed at alpha 1 is attach_skillpack's fp path."""
    model = tiny_model(tied=True)
    names = block_linear_names(model)
    calibration = [{"input_ids": ids_of(11 + i, n=1, length=10)} for i in range(3)]
    stats = collect_channel_stats(model, calibration, sorted(names))
    sp = compress_residual(
        residual_with_norms(model),
        names,
        16,
        bits,
        "math",
        "fp-a",
        smoothing="smoothquant",
        rotation="hadamard",
        calibration=stats,
        embedding_rank=8,
        tied_embeddings=True,
    )
    assert (
        len(sp.dense) == 5
        and "model.embed_tokens" in sp.factors
        and sp.factors["model.layers.0.mlp.up_proj"].smooth is not None
    )
    ids = ids_of(12, n=2)
    base = logits(model, ids)
    attach_skillpack(model, sp, int_mm=False)
    want = logits(model, ids)
    detach_skillpack(model)
    attach_composition(model, [from_skillpack(sp)], expected_fingerprint="fp-a")
    got = logits(model, ids)
    detach_composition(model)
    assert ((got - want).norm() / (want - base).norm()).item() < 1e-5


def peft_adapter(model, path, seed: int, fingerprint: str = "fp-a"):
    """A trained-looking PEFT LoRA (random lora_B, rank 4, alpha 8: scale 2) on some linears, stamped."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(copy.deepcopy(model), config)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(str(path))
    (path / STAMP).write_text(json.dumps({"kind": "lora", "backbone_fingerprint": fingerprint, "domain": "code"}))
    return path


def test_a_peft_adapters_view_is_its_dense_delta_and_serves_as_peft_does(tmp_path):
    from peft import PeftModel

    model = tiny_model()
    adapter = peft_adapter(model, tmp_path / "lora", seed=0)
    skill = from_peft_adapter(adapter)
    assert (skill.name, skill.source, skill.backbone_fingerprint) == ("code", "peft", "fp-a")
    want = lora_dense_delta(adapter)
    delta = merged_delta(attach_composition(model, [skill]))
    assert delta.keys() == want.keys() and len(want) == 6
    assert all(torch.allclose(delta[k], want[k], rtol=1e-5, atol=1e-6) for k in want)
    ids = ids_of(13, n=2)
    composed = logits(model, ids)
    detach_composition(model)
    served = logits(PeftModel.from_pretrained(copy.deepcopy(model), str(adapter)).eval(), ids)
    torch.testing.assert_close(composed, served, rtol=1e-5, atol=1e-5)
    with pytest.raises(ArtifactError, match="adapter of backbone fp-a, not of fp-b"):
        from_peft_adapter(adapter, backbone_fingerprint="fp-b")


def test_an_exported_skillpack_reads_back_as_the_same_factors(tmp_path):
    """export_skillpack's adapter (embedding LoRA + tied head) composes as PEFT serves it and has the
    skillpack's deltas: the embedding convention (A = scale lora_embedding_A^T) is the right way round."""
    from peft import PeftModel

    model = tiny_model(tied=True)
    sp = compress_with_embedding(model, embedding_residual(model, tied=True), True, 8)
    export_skillpack(sp, tmp_path / "exported", "tiny")
    skill = from_peft_adapter(tmp_path / "exported", backbone_fingerprint="fp-a")
    view = from_skillpack(sp)
    assert skill.factors.keys() == view.factors.keys() and {"model.embed_tokens", "lm_head"} <= skill.factors.keys()
    for m, (a, b) in view.factors.items():
        torch.testing.assert_close(skill.factors[m][0] @ skill.factors[m][1], a @ b, rtol=1e-5, atol=1e-6)
    ids = ids_of(14, n=2)
    attach_composition(model, [skill])
    composed = logits(model, ids)
    detach_composition(model)
    served = logits(PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "exported")).eval(), ids)
    torch.testing.assert_close(composed, served, rtol=1e-4, atol=1e-5)


# ---- (e) the artifact


@pytest.fixture
def saved(tmp_path):
    model = tiny_model()
    adapter = peft_adapter(model, tmp_path / "lora", seed=1)
    skills = [random_skill(model, "s1", 1), from_peft_adapter(adapter)]
    g = torch.Generator().manual_seed(15)
    composition = attach_composition(model, skills, {m: torch.rand(2, generator=g) for m in block_linear_names(model)})
    path = tmp_path / "composition.safetensors"
    save_composition(path, composition, {"task": "math+code", "steps": 0})
    return model, skills, composition, path, adapter


def test_save_load_round_trip(saved):
    model, _, composition, path, adapter = saved
    ids = ids_of(16, n=2)
    want = logits(model, ids)
    detach_composition(model)
    assert [p.name for p in path.parent.iterdir() if p.is_file()] == ["composition.safetensors"]  # no temp file
    fresh = [random_skill(model, "s1", 1), from_peft_adapter(adapter)]  # the same parts, read again
    loaded, meta = load_composition(path, fresh, expected_fingerprint="fp-a")
    assert meta == {"task": "math+code", "steps": 0} and loaded.backbone_fingerprint == "fp-a"
    assert all(torch.equal(loaded.alphas()[m], a) for m, a in composition.alphas().items())
    attach_composition(model, loaded.skills, loaded.alphas())
    assert torch.equal(logits(model, ids), want)


def test_load_refuses_another_backbone_and_missing_or_changed_parts(saved, tmp_path):
    _, skills, _, path, _ = saved
    with pytest.raises(ArtifactError) as e:
        load_composition(path, skills, expected_fingerprint="fp-b")
    assert "trained for backbone fp-a, this model is fp-b; retrain the composition (stage=cat)" in one_line(e)
    with pytest.raises(ArtifactError) as e:
        load_composition(path, skills[:1])
    assert "has parts ['s1', 'code'], given ['s1']; pass its parts in order" in one_line(e)
    with pytest.raises(ArtifactError) as e:
        load_composition(path, skills[::-1])
    assert "part 0 is skillpack 's1'" in one_line(e)
    changed = copy.deepcopy(skills[1])
    a, b = changed.factors["model.layers.0.self_attn.q_proj"]
    changed.factors["model.layers.0.self_attn.q_proj"] = (a * 1.001, b)
    with pytest.raises(ArtifactError) as e:
        load_composition(path, [skills[0], changed])
    assert (
        f"part 1 is peft 'code' (digest {skills[1].digest()[:12]}), given peft 'code' (digest {changed.digest()[:12]})"
        in one_line(e)
    )
    for bad in (tmp_path / "missing.safetensors", tmp_path / "lora" / "adapter_model.safetensors"):
        with pytest.raises(ArtifactError) as e:
            load_composition(bad, skills)
        assert "is not a readable composition" in one_line(e)


# ---- LoRA machinery: a planted delta is recovered; PEFT's "cat" merge is the uniform sum


def test_a_lora_recovers_a_planted_low_rank_delta(tmp_path):
    """The LoRA S2L trains (peft_config of lora.*), fitted to a model that differs from the base by a planted
    rank-2 delta on every down_proj, reads back (lora_dense_delta, the skillpack view) as that delta."""
    from peft import get_peft_model

    from skillweave.config import LoRAConfig
    from skillweave.lora_io import peft_config

    model = tiny_model()
    g = torch.Generator().manual_seed(5)
    planted = {}
    for i in range(2):
        w = model.get_submodule(f"model.layers.{i}.mlp.down_proj").weight
        planted[f"model.layers.{i}.mlp.down_proj.weight"] = (torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g)) * 0.1
    teacher = add_delta(copy.deepcopy(model), planted)
    ids = torch.randint(0, 128, (32, 12), generator=g)
    with torch.no_grad():
        target = teacher(input_ids=ids).logits
    student = get_peft_model(copy.deepcopy(model), peft_config(LoRAConfig(rank=2, alpha=2, dropout=0.0, target_modules=["down_proj"])))
    params = [p for n, p in student.named_parameters() if "lora_" in n]
    optimizer = torch.optim.Adam(params, lr=0.01)
    torch.manual_seed(0)
    for _ in range(400):
        loss = torch.nn.functional.mse_loss(student(input_ids=ids).logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.save_pretrained(str(tmp_path))
    got = lora_dense_delta(tmp_path)
    assert set(got) == set(planted)
    errors = {k: ((got[k] - planted[k]).norm() / planted[k].norm()).item() for k in planted}
    assert max(errors.values()) < 0.01, errors


def test_peft_cat_merge_is_the_uniform_composition(tmp_path):
    """cat_eval's cross-check: PEFT add_weighted_adapter(cat, weights 1) serves what the plain sum serves."""
    from peft import PeftModel

    model = tiny_model()
    a, b = peft_adapter(model, tmp_path / "a", seed=1), peft_adapter(model, tmp_path / "b", seed=2)
    ids = ids_of(12, n=2)
    base = logits(model, ids)
    attach_composition(model, [from_peft_adapter(a), from_peft_adapter(b)], 1.0)
    want = logits(model, ids)
    detach_composition(model)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(a), adapter_name="a")
    peft_model.load_adapter(str(b), adapter_name="b")
    peft_model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "merged", combination_type="cat")
    peft_model.set_adapter("merged")
    got = logits(peft_model.eval(), ids)
    assert ((got - want).norm() / (want - base).norm()).item() < 1e-5
