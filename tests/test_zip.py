"""SkillZip: SVD factors, INT8 quantization, the skillpack file, and attach/detach on a tiny Llama."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from skillweave.zip import (
    SkillpackError,
    SkillpackLinear,
    attach_skillpack,
    attached_domain,
    attached_skillpack,
    block_linear_names,
    compress_residual,
    detach_skillpack,
    kernels,
    load_skillpack,
    save_skillpack,
    skillpack_attached,
    skillpack_nbytes,
)
from skillweave.zip.kernels import _blas_operand, _int_mm_accepts, int8_mm, int8_mm_operand
from skillweave.zip.quant import dequantize, quantize_per_channel
from skillweave.zip.svd import eckart_young_bound, low_rank_factors

FULL_RANK = 64  # >= min(out, in) of every linear in the tiny model: only INT8 rounding is left
# The int_mm path adds three INT8 roundings to the fp path (activations, the truncated intermediate,
# A with B's scales folded in), each ~0.5% relative for Gaussian-like data; measured ~1.2% per layer.
INT_PATH_REL_TOL = 0.03
# INT8 factors of a full-rank SVD leave ~1% relative error per layer (meta["layer_rel_error"]).
LAYER_REL_TOL = 0.02


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads, and on a busy 2-core box OpenMP stalls made each small
    SVD take ~0.3 s with 2 threads against ~0.5 ms with 1 (STACK.md saw the same in decoding)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(hidden: int = 64, seed: int = 0, tied: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def residual():
    """A dense random residual for every parameter (the hard case for SVD), plus one all-zero layer."""
    g = torch.Generator().manual_seed(1)
    res = {}
    for key, p in tiny_model().state_dict().items():
        scale = 0.05 * p.std().item() if p.ndim == 2 else 0.05
        res[key] = scale * torch.randn(p.shape, generator=g)
    res["model.layers.1.mlp.up_proj.weight"].zero_()
    return res


@pytest.fixture(scope="module")
def skillpack(residual):
    return compress_residual(residual, block_linear_names(tiny_model()), FULL_RANK, 8, "math", "fp-a")


@pytest.fixture(scope="module")
def input_ids():
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))


# ---- svd.py


def test_known_rank_matrix_is_recovered():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 5, generator=g) @ torch.randn(5, 40, generator=g)
    a, b, err = low_rank_factors(w, 5)
    assert a.shape == (48, 5) and b.shape == (5, 40)
    assert err <= 1e-5 * w.norm().item()
    assert torch.allclose(a @ b, w, atol=1e-4)
    # rank above min(out, in) is capped, not an error
    a, b, err = low_rank_factors(w, 100)
    assert a.shape == (48, 40) and b.shape == (40, 40)
    assert err <= 1e-5 * w.norm().item()


@pytest.mark.parametrize("rank", [1, 8, 20, 39])
def test_truncation_error_equals_eckart_young_bound(rank):
    w = torch.randn(48, 40, generator=torch.Generator().manual_seed(rank))
    _, _, err = low_rank_factors(w, rank)
    assert err == pytest.approx(eckart_young_bound(w, rank), rel=1e-4)


def test_factors_split_singular_values_evenly():
    # A = U S^1/2 and B = S^1/2 V^T: column i of A and row i of B have the same norm, sqrt(sigma_i)
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(3))
    a, b, _ = low_rank_factors(w, 6)
    assert torch.allclose(a.norm(dim=0), b.norm(dim=1), rtol=1e-4)
    assert torch.allclose(a.norm(dim=0) ** 2, torch.linalg.svdvals(w)[:6], rtol=1e-4)


# ---- quant.py


@pytest.mark.parametrize("dim", [0, 1])
def test_int8_round_trip_within_half_a_step(dim):
    t = torch.randn(16, 24, generator=torch.Generator().manual_seed(dim)) * torch.logspace(-3, 1, 24)
    t[3] = 0.0  # an all-zero row: its scale is 0, no division by zero
    q, scale = quantize_per_channel(t, bits=8, dim=dim)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert scale.shape == (t.shape[dim],)
    assert q.abs().max().item() == 127 and q.min().item() >= -127
    back = dequantize(q, scale, dim=dim)
    step = scale.reshape([-1, 1] if dim == 0 else [1, -1])
    assert torch.all((back - t).abs() <= 0.5 * step * (1 + 1e-5))
    if dim == 0:
        assert scale[3] == 0 and torch.all(q[3] == 0) and torch.all(back[3] == 0)
    assert torch.isfinite(back).all()


def test_unsupported_bits_say_what_is_supported():
    with pytest.raises(ValueError, match=r"INT3 .*not implemented.*\(8, 4\)"):
        quantize_per_channel(torch.ones(2, 2), bits=3)
    with pytest.raises(ValueError, match="INT2"):
        compress_residual({}, set(), 8, 2, "math", "fp-a")


# ---- compress_residual


def test_compress_keeps_linears_and_norms_drops_embeddings(residual, skillpack):
    linears = block_linear_names(tiny_model())
    assert len(linears) == 14 and "lm_head" not in linears
    # the all-zero layer is skipped, every other linear is factored at its full rank
    assert set(skillpack.factors) == linears - {"model.layers.1.mlp.up_proj"}
    assert skillpack.meta["skipped_zero"] == ["model.layers.1.mlp.up_proj.weight"]
    assert skillpack.factors["model.layers.0.mlp.down_proj"].a_q.shape == (64, 64)
    assert skillpack.factors["model.layers.0.mlp.up_proj"].b_q.shape == (64, 64)
    # embeddings and the head are not linears of the blocks: dropped, with their share of the norm
    dropped = skillpack.meta["dropped"]
    assert set(dropped) == {"model.embed_tokens.weight", "lm_head.weight"}
    total = sum(t.pow(2).sum() for t in residual.values()).sqrt()
    assert dropped["lm_head.weight"] == pytest.approx((residual["lm_head.weight"].norm() / total).item())
    # norm weights stay dense, in fp16
    assert set(skillpack.dense) == {k for k, t in residual.items() if t.ndim == 1}
    assert all(t.dtype == torch.float16 for t in skillpack.dense.values())
    errors = skillpack.meta["layer_rel_error"]
    assert set(errors) == set(skillpack.factors) and 0 < max(errors.values()) < LAYER_REL_TOL
    # None = every 2-D weight under model.layers.
    assert set(compress_residual(residual, None, 4, 8, "math", "fp-a").factors) == set(skillpack.factors)


def test_compress_fails_loudly():
    with pytest.raises(ValueError, match="no weight for 1 linear"):
        compress_residual({}, {"model.layers.0.mlp.up_proj"}, 8, 8, "math", "fp-a")
    with pytest.raises(ValueError, match="non-finite"):
        nan = {"model.norm.weight": torch.tensor([1.0, float("nan")])}
        compress_residual(nan, set(), 8, 8, "math", "fp-a")


# ---- file format


def test_save_load_round_trip_and_byte_count(skillpack, tmp_path):
    path = tmp_path / "math.safetensors"
    save_skillpack(skillpack, path)
    assert [p.name for p in tmp_path.iterdir()] == ["math.safetensors"]  # no temp file left behind
    loaded = load_skillpack(path, expected_fingerprint="fp-a")
    assert (loaded.domain, loaded.backbone_fingerprint, loaded.rank, loaded.bits) == ("math", "fp-a", 64, 8)
    assert loaded.meta == json.loads(json.dumps(skillpack.meta))
    for name, f in skillpack.factors.items():
        g = loaded.factors[name]
        assert all(torch.equal(getattr(f, p), getattr(g, p)) for p in ("a_q", "a_scale", "b_q", "b_scale"))
    assert all(torch.equal(skillpack.dense[k], loaded.dense[k]) for k in skillpack.dense)
    stored = [t for f in loaded.factors.values() for t in f.stored().values()] + list(loaded.dense.values())
    # per layer (out, in) at rank r = min(out, in): int8 out*r + r*in, float32 scales out + r
    shapes = {
        "q": (64, 64), "k": (32, 64), "v": (32, 64), "o": (64, 64),
        "gate": (128, 64), "up": (128, 64), "down": (64, 128),
    }
    layer = {k: o * min(o, i) + min(o, i) * i + 4 * (o + min(o, i)) for k, (o, i) in shapes.items()}
    want = 2 * sum(layer.values()) - layer["up"] + 5 * 64 * 2  # one up_proj is zero; 5 fp16 norms
    assert skillpack_nbytes(skillpack) == sum(t.nbytes for t in stored) == want == 113_536
    assert 0 < path.stat().st_size - skillpack_nbytes(skillpack) < 16_384  # the rest is the JSON header


def test_fingerprint_mismatch_is_refused(skillpack, tmp_path):
    path = tmp_path / "math.safetensors"
    save_skillpack(skillpack, path)
    with pytest.raises(SkillpackError, match="made for backbone fp-a, this model is fp-b; zip a skillpack"):
        load_skillpack(path, expected_fingerprint="fp-b")
    model = tiny_model()
    with pytest.raises(SkillpackError, match="made for backbone fp-a, this model is fp-b"):
        attach_skillpack(model, skillpack, expected_fingerprint="fp-b")
    assert attached_domain(model) is None


def test_truncated_missing_or_foreign_files_are_refused(skillpack, tmp_path):
    path = tmp_path / "math.safetensors"
    save_skillpack(skillpack, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SkillpackError, match="truncated or corrupt safetensors file .*re-run the zip stage"):
        load_skillpack(path)
    with pytest.raises(SkillpackError, match="does not exist"):
        load_skillpack(tmp_path / "nope.safetensors")
    save_file({"x": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(SkillpackError, match="not a skillpack"):
        load_skillpack(tmp_path / "plain.safetensors")
    header = {
        "format_version": 1, "domain": "math", "backbone_fingerprint": "fp-a", "rank": 1, "bits": 8, "meta": {}
    }
    save_file({"x": torch.zeros(2)}, tmp_path / "v1.safetensors", metadata={"skillweave": json.dumps(header)})
    with pytest.raises(SkillpackError, match="format_version 1; this skillweave reads versions 2, 3"):
        load_skillpack(tmp_path / "v1.safetensors")


# ---- attach / detach


def test_full_rank_skillpack_reproduces_the_finetuned_model(residual, skillpack, input_ids):
    model = tiny_model()
    # the model the skillpack stands for: backbone + residual on everything it keeps
    target = copy.deepcopy(model)
    with torch.no_grad():
        for key, p in target.named_parameters():
            if key not in skillpack.meta["dropped"]:
                p.add_(residual[key])
        base, want = model(input_ids).logits, target(input_ids).logits
        attach_skillpack(model, skillpack, expected_fingerprint="fp-a")
        got = model(input_ids).logits
    change = (want - base).norm()
    assert change > 0.05 * base.norm()  # the residual does move the logits
    assert ((got - want).norm() / change).item() < 0.03  # measured ~1%: the INT8 rounding of the factors


def test_detach_restores_the_backbone_bit_exactly(skillpack, input_ids):
    model = tiny_model()
    name = "model.layers.0.self_attn.q_proj"
    linear = model.get_submodule(name)
    ptr = linear.weight.data_ptr()
    norm_before = model.model.norm.weight.detach().clone()
    with torch.no_grad():
        before = model(input_ids).logits
        attach_skillpack(model, skillpack)
        wrapped = model.get_submodule(name)
        assert isinstance(wrapped, SkillpackLinear) and wrapped.base is linear  # kept by reference
        assert wrapped.base.weight.data_ptr() == ptr
        assert attached_domain(model) == "math"
        assert not torch.equal(model.model.norm.weight, norm_before)  # the dense residual is in
        with pytest.raises(SkillpackError, match="already attached; detach_skillpack"):
            attach_skillpack(model, skillpack)
        detach_skillpack(model)
        after = model(input_ids).logits
    assert model.get_submodule(name) is linear and linear.weight.data_ptr() == ptr
    assert torch.equal(model.model.norm.weight, norm_before)
    assert torch.equal(after, before)
    assert attached_domain(model) is None
    with pytest.raises(SkillpackError, match="no skillpack is attached"):
        detach_skillpack(model)


def test_skillpack_attached_restores_the_backbone_when_its_block_fails(skillpack, input_ids):
    model = tiny_model()
    with torch.no_grad():
        before = model(input_ids).logits
        with pytest.raises(RuntimeError, match="scoring failed"):
            with skillpack_attached(model, skillpack, int_mm=True) as attached:
                assert attached is model and attached_skillpack(model) == (skillpack, True)
                assert not torch.equal(model(input_ids).logits, before)
                raise RuntimeError("scoring failed")
        assert attached_domain(model) is None and torch.equal(model(input_ids).logits, before)


def test_skillpack_for_another_shape_is_refused_before_any_change(skillpack):
    model = tiny_model(hidden=32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    msg = "factors of model.layers.0.mlp.down_proj make a (64, 128) delta, the layer is (32, 64)"
    with pytest.raises(SkillpackError, match=re.escape(msg)):
        attach_skillpack(model, skillpack)
    assert attached_domain(model) is None
    assert not any(isinstance(m, SkillpackLinear) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_int_mm_path_matches_the_fp_path(skillpack, input_ids):
    g = torch.Generator().manual_seed(4)
    model = tiny_model()
    for name, factors in skillpack.factors.items():
        linear = model.get_submodule(name)
        x = torch.randn(3, 7, linear.in_features, generator=g)
        fp = SkillpackLinear(linear, factors).delta(x)
        int_path = SkillpackLinear(linear, factors, int_mm=True).delta(x)
        assert int_path.shape == fp.shape == (3, 7, linear.out_features)
        assert rel(int_path, fp) < INT_PATH_REL_TOL, name
        # batch-1 decoding: a single token
        one = x[:1, -1:]
        one_int = SkillpackLinear(linear, factors, int_mm=True).delta(one)
        assert rel(one_int, SkillpackLinear(linear, factors).delta(one)) < INT_PATH_REL_TOL
    with torch.no_grad():
        base = model(input_ids).logits
        attach_skillpack(model, skillpack)
        fp_logits = model(input_ids).logits
        detach_skillpack(model)
        attach_skillpack(model, skillpack, int_mm=True)
        int_logits = model(input_ids).logits
        detach_skillpack(model)
    assert ((int_logits - fp_logits).norm() / (fp_logits - base).norm()).item() < INT_PATH_REL_TOL


@pytest.mark.parametrize("units", [True, False], ids=["int_mm", "fp32_chunks"])
@pytest.mark.parametrize("m, k, n", [(1, 576, 16), (7, 16, 576), (32, 1536, 16), (5, 3001, 9)])
def test_int8_mm_is_the_exact_integer_product_with_or_without_int8_units(units, m, k, n):
    g = torch.Generator().manual_seed(m * k + n)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int8)
    a[0], b[:, 0] = 127, 127  # a largest-sum cell: 127^2 * k, odd and beyond fp32's 2^24 integers at k = 3001
    want = (a.long() @ b.long()).int()
    operand = int8_mm_operand(b, units)
    assert operand.dtype == (torch.int8 if units else torch.float32)
    got = int8_mm(a, operand)
    assert got.dtype == torch.int32 and torch.equal(got, want)
    assert torch.equal(torch._int_mm(_blas_operand(a), b), want)
    if k > 2**24 // 127**2:  # one fp32 GEMM over all of k cannot hold that cell: the chunks are needed
        assert (a[:1].float() @ b[:, :1].float()).item() != want[0, 0].item()


def compiled_with_reductions(monkeypatch, fn):
    """`fn` compiled by inductor, and a list that records what `_as_reduction` answered while dynamo traced it."""
    answers = []

    def recording(x, real=kernels._as_reduction):
        answers.append(real(x))
        return answers[-1]

    monkeypatch.setattr(kernels, "_as_reduction", recording)
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, dynamic=False), answers


@pytest.mark.parametrize("units", [True, False], ids=["int_mm", "fp32_chunks"])
@pytest.mark.parametrize("k", [576, 3001])
def test_int8_mm_compiled_at_one_row_is_a_reduction_and_still_exact(monkeypatch, units, k):
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (1, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, 5), generator=g, dtype=torch.int8)
    a[0], b[:, 0] = 127, 127  # at k = 3001 a cell beyond fp32's integers: the chunks' int32 sum is needed
    want = (a.long() @ b.long()).int()
    product, answers = compiled_with_reductions(
        monkeypatch, lambda a: int8_mm(a, int8_mm_operand(b, units)))
    got = product(a)
    assert answers == [True] and got.dtype == torch.int32 and torch.equal(got, want)
    assert torch.equal(product(a), want)  # the compiled graph, run again
    assert not kernels._as_reduction(a)  # eagerly never


@pytest.mark.parametrize("int_mm", [False, True], ids=["fp", "int"])
def test_a_compiled_token_gets_the_eager_delta(monkeypatch, skillpack, int_mm):
    """One token through a compiled SkillpackLinear takes the reduction form (`_as_reduction`) and gets the
    eager path's delta to float rounding; three tokens keep the GEMMs."""
    name = "model.layers.0.mlp.down_proj"
    layer = SkillpackLinear(tiny_model().get_submodule(name), skillpack.factors[name], int_mm=int_mm)
    x = torch.randn(3, 1, layer.base.in_features, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = {rows: layer.delta(x[:rows]) for rows in (1, 3)}
        delta, answers = compiled_with_reductions(monkeypatch, layer.delta)
        for rows in (1, 3):
            got = delta(x[:rows])
            assert rel(got, want[rows]) < 1e-5 and got.shape == want[rows].shape, rows
    assert answers == [True, True, False, False]  # a trace per row count, two products in each


@pytest.mark.parametrize("k, shape", [(16, (1, 16, 3)), (1024, (1, 1024, 3)), (1536, (2, 768, 3)), (3001, (3, 1001, 3))])
def test_int8_mm_operand_splits_k_into_equal_exact_chunks(k, shape):
    b = torch.randint(-128, 128, (k, 3), dtype=torch.int8)
    op = int8_mm_operand(b, units=False)
    assert op.shape == shape and op.dtype == torch.float32
    assert torch.equal(op.reshape(-1, 3)[:k], b.float()) and not op.reshape(-1, 3)[k:].any()  # zero padding


def test_the_integer_path_without_int8_units_answers_as_int_mm_bit_for_bit(monkeypatch, skillpack):
    g = torch.Generator().manual_seed(5)
    model = tiny_model()
    for name, factors in skillpack.factors.items():
        linear = model.get_submodule(name)
        x = torch.randn(3, 7, linear.in_features, generator=g)
        deltas = {}
        for units in (True, False):
            monkeypatch.setattr("skillweave.zip.kernels.int8_units", lambda device_type, units=units: units)
            layer = SkillpackLinear(linear, factors, int_mm=True)
            assert layer.b_op.dtype == (torch.int8 if units else torch.float32)  # fp32 chunks only without units
            deltas[units] = layer.delta(x)
        assert torch.equal(deltas[True], deltas[False]), name


# Layouts that torch._int_mm on CPU gets silently wrong unless re-laid out (torch 2.13): a size-1
# dim carrying a unit stride where the leading dimension should be.
@pytest.mark.parametrize(
    "a, b",
    [
        # (1, K) row with strides (1, 1): a single token as a column view
        (torch.arange(64, dtype=torch.int8).reshape(64, 1).t(), torch.ones(64, 8, dtype=torch.int8)),
        # rank-1 A_q.t(): (1, out) with strides (1, 1) as the second operand
        (torch.ones(4, 1, dtype=torch.int8), torch.arange(8, dtype=torch.int8).reshape(8, 1).t()),
        # ordinary layouts pass through untouched: row-major and a transposed (column-major) weight
        (torch.ones(5, 16, dtype=torch.int8), torch.arange(48, dtype=torch.int8).reshape(3, 16).t()),
    ],
)
def test_int_mm_operands_are_laid_out_for_the_cpu_kernel(a, b):
    want = a.long() @ b.long()
    assert torch.equal(torch._int_mm(_blas_operand(a), _blas_operand(b)).long(), want)


def test_blas_operand_copies_only_degenerate_layouts():
    ok = torch.zeros(3, 16, dtype=torch.int8)
    assert _blas_operand(ok) is ok and _blas_operand(ok.t()).data_ptr() == ok.data_ptr()
    bad = torch.zeros(16, 1, dtype=torch.int8).t()
    assert _blas_operand(bad).stride() == (16, 1)


@pytest.mark.parametrize(
    "m, k, n, device, accepts",
    [
        (1, 64, 16, "cpu", True),  # CPU takes every shape, batch-1 decoding included
        (1, 63, 3, "cpu", True),
        (17, 64, 16, "cuda", True),  # cuBLASLt: m > 16, k and n multiples of 8
        (16, 64, 16, "cuda", False),  # batch-1 decoding on CUDA: the fp path answers
        (32, 60, 16, "cuda", False),
        (32, 64, 12, "cuda", False),
        (32, 64, 16, "mps", False),  # no _int_mm there
    ],
)
def test_int_mm_accepts(m, k, n, device, accepts):
    assert _int_mm_accepts(m, k, n, torch.device(device)) is accepts


# ---- the embedding's residual (embedding_rank)


def embedding_residual(model, tied: bool) -> dict[str, torch.Tensor]:
    """A residual on every parameter whose embedding part is rank 4 plus a little noise (a fine-tune's
    embedding residual is far from full rank); with tied weights lm_head has none of its own, as in a
    delta read from disk (safetensors stores the tied weight once)."""
    g = torch.Generator().manual_seed(5)
    res = {k: 0.05 * p.std().item() * torch.randn(p.shape, generator=g) for k, p in model.state_dict().items()}
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        low = torch.randn(128, 4, generator=g) @ torch.randn(4, 64, generator=g)
        res[key] = 0.3 * model.get_parameter(key).std().item() * (low / low.std() + 0.05 * torch.randn(128, 64, generator=g))
    if tied:
        del res["lm_head.weight"]
    return res


def compress_with_embedding(model, res, tied: bool, embedding_rank: int):
    return compress_residual(
        res, block_linear_names(model), 16, 8, "math", "fp-a", rotation="hadamard",
        embedding_rank=embedding_rank, tied_embeddings=tied,
    )


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_factors_bring_the_model_closer_to_the_full_residual(tied, input_ids):
    from skillweave.zip.fidelity import next_token_kl

    model = tiny_model(tied=tied)
    res = embedding_residual(model, tied)
    dropped, kept = (compress_with_embedding(model, res, tied, r) for r in (0, 8))
    assert "model.embed_tokens.weight" in dropped.meta["dropped"] and "model.embed_tokens" not in dropped.factors
    # tied: one set of factors serves both sides; untied: lm_head has its own
    assert {"model.embed_tokens", "lm_head"} & set(kept.factors) == ({"model.embed_tokens"} if tied else {"model.embed_tokens", "lm_head"})
    assert kept.meta["dropped"] == {} and kept.meta["layer_rel_error"]["model.embed_tokens"] < 0.08
    # the model the residual stands for: every parameter moved
    target = copy.deepcopy(model)
    with torch.no_grad():
        for key, r in res.items():
            target.get_parameter(key).add_(r)
        want = target(input_ids).logits
        error = {}
        for sp in (dropped, kept):
            attach_skillpack(model, sp, int_mm=True)
            error[sp is kept] = rel(model(input_ids).logits, want)
            detach_skillpack(model)
    batches = [{"input_ids": input_ids}]
    kl = {sp is kept: next_token_kl(model, res, sp, batches)["kl_skillpack"] for sp in (dropped, kept)}
    # measured: logits error 0.35 -> 0.030 tied, 0.39 -> 0.036 untied; KL 2.4e-3 -> 1.7e-5 and 2.2e-3 -> 1.8e-5
    assert error[True] < 0.15 * error[False], error
    assert kl[True] < 0.02 * kl[False], kl


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_attach_detach_is_bit_exact_and_copies_nothing(tied, input_ids):
    from skillweave.zip import SkillpackEmbedding

    model = tiny_model(tied=tied)
    sp = compress_with_embedding(model, embedding_residual(model, tied), tied, 8)
    embedding, head = model.model.embed_tokens, model.lm_head
    ptrs = (embedding.weight.data_ptr(), head.weight.data_ptr())
    with torch.no_grad():
        before = model(input_ids).logits
        attach_skillpack(model, sp, int_mm=True)
        assert isinstance(model.model.embed_tokens, SkillpackEmbedding) and model.model.embed_tokens.base is embedding
        assert isinstance(model.lm_head, SkillpackLinear) and model.lm_head.base is head  # tied: same factors
        assert model.get_input_embeddings().weight is embedding.weight
        assert not torch.equal(model(input_ids).logits, before)
        detach_skillpack(model)
        after = model(input_ids).logits
    assert model.model.embed_tokens is embedding and model.lm_head is head
    assert (embedding.weight.data_ptr(), head.weight.data_ptr()) == ptrs
    assert (head.weight is embedding.weight) is tied
    assert torch.equal(after, before)


def test_embedding_bytes_are_counted():
    model = tiny_model(tied=True)
    res = embedding_residual(model, tied=True)
    dropped, kept = (compress_with_embedding(model, res, True, r) for r in (0, 8))
    # int8 A (128 x 8) and B (8 x 64), fp32 scales per row of A (128) and per rank (8)
    assert skillpack_nbytes(kept) - skillpack_nbytes(dropped) == 128 * 8 + 8 * 64 + 4 * (128 + 8) == 2080


def test_tied_embeddings_mismatches_are_refused():
    untied, tied = tiny_model(tied=False), tiny_model(tied=True)
    sp_tied = compress_with_embedding(tied, embedding_residual(tied, True), True, 8)
    with pytest.raises(SkillpackError, match="made for tied embeddings; this model's output head does not share"):
        attach_skillpack(untied, sp_tied)
    sp_untied = compress_with_embedding(untied, embedding_residual(untied, False), False, 8)
    del sp_untied.factors["lm_head"]
    with pytest.raises(SkillpackError, match="made for untied embeddings; this model's output head shares"):
        attach_skillpack(tied, sp_untied)
    assert attached_domain(tied) is None and attached_domain(untied) is None
    res = embedding_residual(untied, tied=False)  # two different residuals cannot be one tied weight
    with pytest.raises(ValueError, match="tied_embeddings, but the residuals of model.embed_tokens.weight and lm_head"):
        compress_with_embedding(untied, res, True, 8)
    with pytest.raises(ValueError, match="embedding_rank must be >= 0"):
        compress_with_embedding(untied, res, False, -1)


def test_embedding_factors_round_trip_through_the_file(tmp_path):
    model = tiny_model(tied=True)
    sp = compress_with_embedding(model, embedding_residual(model, True), True, 8)
    save_skillpack(sp, tmp_path / "math.safetensors")
    loaded = load_skillpack(tmp_path / "math.safetensors")
    assert loaded.tied_embeddings is True
    f, g = sp.factors["model.embed_tokens"], loaded.factors["model.embed_tokens"]
    assert (g.out_features, g.in_features, g.rank) == (128, 64, 8)
    assert all(torch.equal(t, g.stored()[k]) for k, t in f.stored().items())


def test_fidelity_reference_adds_a_tied_residual_once(input_ids):
    """An in-memory state_dict of a tied model lists the shared weight under both names; the reference
    (backbone + whole residual) must still add it once, or a lossless skillpack would read as lossy."""
    from skillweave.zip.fidelity import next_token_kl

    model = tiny_model(tied=True)
    res = embedding_residual(model, tied=True)
    both = {**res, "lm_head.weight": res["model.embed_tokens.weight"]}
    # full rank everywhere: only INT8 rounding is left
    sp = compress_residual(both, block_linear_names(model), 64, 8, "math", "fp-a", embedding_rank=64, tied_embeddings=True)
    batches = [{"input_ids": input_ids}]
    kl = next_token_kl(model, res, sp, batches, int_mm=False)
    assert next_token_kl(model, both, sp, batches, int_mm=False) == kl
    assert kl["kl_skillpack"] < 1e-3 * kl["kl_backbone"]
