"""Generation backends (skillweave.engines): the vLLM engine process, its protocol and every call site
(generate, dev, eval), run here over tests/fake_vllm (vLLM's offline API over transformers: its greedy
answers are transformers' own, so the two backends must agree answer for answer). tests/test_vllm.py
runs the real vLLM where `make vllm` installed it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import build_tiny_model
from test_pipeline import overrides, run_overrides

import skillweave
from skillweave.config import SamplingConfig
from skillweave.core.errors import ConfigError
from skillweave.engines import (EngineError, ServedModels, VLLMEngine, process_group, resolve_backend, served_form,
                                worker_env)
from skillweave.evaluation import evaluate
from skillweave.models import load_model, load_tokenizer
from skillweave.sampling import sample_batch
from skillweave.zip import attach_skillpack, block_linear_names, compress_residual, detach_skillpack


@pytest.fixture(scope="module")
def fake_python(fake_vllm_python) -> Path:
    return fake_vllm_python


@pytest.fixture(scope="module")
def engine(fake_python, tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("engine-log") / "vllm.log"
    with VLLMEngine(tiny_model_dir, python=fake_python, dtype="float32", seed=0, max_model_len=512, log_path=log) as e:
        yield e


PROMPTS = [{"id": f"p{i}", "prompt": p, "meta": {}} for i, p in
           enumerate(["add one two", "the list of three", "print yes", "sum zero five six seven", "def return"])]


def test_auto_is_vllm_where_it_is_installed_and_pays(fake_python, tmp_path, monkeypatch):
    monkeypatch.setattr("skillweave.engines.vllm_pays", lambda: True)
    assert resolve_backend("auto", "") == "hf"  # conftest empties $SKILLWEAVE_VLLM_PYTHON
    assert resolve_backend("auto", str(fake_python)) == "vllm"
    monkeypatch.setattr("skillweave.engines.vllm_pays", lambda: False)  # a CPU without bf16 units
    assert resolve_backend("auto", str(fake_python)) == "hf"
    assert resolve_backend("vllm", str(fake_python)) == "vllm"  # asked for by name, it is used
    assert resolve_backend("hf", str(fake_python)) == "hf"
    with pytest.raises(ConfigError, match="make vllm"):
        resolve_backend("vllm", str(tmp_path / "missing" / "python"))


def test_the_engine_outlives_a_starved_step_and_gets_its_ranks_gpu():
    parent = {"PYTHONPATH": "/repo", "VIRTUAL_ENV": "/repo/.venv", "LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "4,5"}
    env = worker_env(parent, threads=2)
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert int(env["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"]) >= 24 * 3600  # vLLM's 300 s killed a paused run
    assert (env["OMP_NUM_THREADS"], env["VLLM_CPU_OMP_THREADS_BIND"], env["CUDA_VISIBLE_DEVICES"]) == ("2", "nobind", "5")
    assert env["VLLM_USE_AOT_COMPILE"] == "0"  # its cache fails to load: a compile at every start
    mine = {"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "60", "VLLM_USE_AOT_COMPILE": "1"}
    assert worker_env(mine, None) == mine


def test_greedy_answers_through_the_engine_are_transformers_answers(engine, tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    tok.padding_side = "left"
    model = load_model(tiny_model_dir, dtype=torch.float32)
    ended = set()
    for limit in (12, 1):  # both ways of ending: the model's stop token and the token limit
        sampling = SamplingConfig(max_new_tokens=limit)
        hf = sample_batch(model, tok, PROMPTS, sampling, seed=0, greedy=True)
        assert sample_batch(None, tok, PROMPTS, sampling, seed=0, greedy=True, engine=engine) == hf
        ended |= {r["truncated"] for r in hf}
    assert ended == {True, False}


def test_sampling_through_the_engine_keeps_the_accounting(engine, tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    sampling = SamplingConfig(samples_per_prompt=3, max_new_tokens=10, temperature=1.0)
    rows = sample_batch(None, tok, PROMPTS[:2], sampling, seed=5, engine=engine)
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(p, s) for p in ("p0", "p1") for s in range(3)]
    for r in rows:
        ids = tok(r["response"], add_special_tokens=False)["input_ids"]
        assert r["truncated"] == (r["n_tokens"] == 10) and len(ids) <= r["n_tokens"]


def served_ctx(python: Path, model_dir: Path, adapters: str) -> SimpleNamespace:
    return SimpleNamespace(model_dir=str(model_dir), cfg=SimpleNamespace(
        threads=1, model=SimpleNamespace(vllm_python=str(python), vllm_request_seed=False),
        eval=SimpleNamespace(vllm_adapters=adapters)))


def skillpack_answers(python: Path, model_dir: Path, workdir: Path, adapters: str) -> dict[str, list[str]]:
    """Greedy answers of `model_dir`'s model (tied embeddings) bare, with a random skillpack attached on its fp
    path (block linears, norms as dense residuals, the embedding and tied head), and that model as
    ServedModels serves it (`adapters`): its backbone with the dense residuals in, plus the skillpack folded
    into the weights or as a LoRA adapter."""
    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    model = load_model(model_dir, dtype=torch.float32)
    sampling = SamplingConfig(max_new_tokens=12)
    answers = {"bare": sample_batch(model, tok, PROMPTS, sampling, seed=0, greedy=True)}
    g = torch.Generator().manual_seed(0)
    residual = {k: (0.5 * p.std().item() if p.ndim == 2 else 0.2) * torch.randn(p.shape, generator=g)
                for k, p in model.state_dict().items()}
    residual["lm_head.weight"] = residual["model.embed_tokens.weight"]
    sp = compress_residual(residual, block_linear_names(model), 8, 8, "math", "fp", embedding_rank=4, tied_embeddings=True)
    assert sp.dense and "model.embed_tokens" in sp.factors
    attach_skillpack(model, sp, int_mm=False)
    answers["hf"] = sample_batch(model, tok, PROMPTS, sampling, seed=0, greedy=True)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    with ServedModels(served_ctx(python, model_dir, adapters), workdir) as served:
        engine = served.engine_for(model)
        assert engine.label.endswith({"lora": "+ LoRA", "folded": ", folded"}[adapters])
        answers["served"] = sample_batch(None, tok, PROMPTS, sampling, seed=0, greedy=True, engine=engine)
        if adapters == "folded":  # tied in the weights the engine loaded, as in the model
            written = load_model(engine.engine.model_dir, dtype=torch.float32)
            assert written.lm_head.weight is written.model.embed_tokens.weight
    assert not list(workdir.glob(".vllm-*"))  # the backbone and adapter written for the engine, removed
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())  # folding a copy, not the model
    return {k: [r["response"] for r in v] for k, v in answers.items()}


def peft_answers(python: Path, model_dir: Path, workdir: Path, adapters: str) -> dict[str, list[str]]:
    """Greedy answers of `model_dir`'s model bare, with two random PEFT LoRAs loaded and the second ("math")
    active, and that PeftModel as ServedModels serves it (`adapters`): its base weights with the active
    adapter folded in, or plus that adapter as a LoRA request."""
    from peft import LoraConfig, get_peft_model

    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    model = load_model(model_dir, dtype=torch.float32)
    sampling = SamplingConfig(max_new_tokens=12)
    answers = {"bare": sample_batch(model, tok, PROMPTS, sampling, seed=0, greedy=True)}
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)  # B random, not 0
    model = get_peft_model(model, config, adapter_name="code")
    model.add_adapter("math", config)
    model.set_adapter("math")
    answers["hf"] = sample_batch(model, tok, PROMPTS, sampling, seed=0, greedy=True)
    with ServedModels(served_ctx(python, model_dir, adapters), workdir) as served:
        engine = served.engine_for(model)
        if adapters == "lora":
            assert engine.label.endswith("+ LoRA") and engine.lora.name == "math"
        else:
            assert engine.label.endswith(", folded") and engine.lora is None
        answers["served"] = sample_batch(None, tok, PROMPTS, sampling, seed=0, greedy=True, engine=engine)
    assert not list(workdir.glob(".vllm-*"))
    return {k: [r["response"] for r in v] for k, v in answers.items()}


@pytest.mark.parametrize("adapters", ["folded", "lora"])
def test_a_peft_lora_is_served_as_the_base_weights_with_the_active_adapter(fake_python, tiny_model_dir, tmp_path,
                                                                            adapters):
    answers = peft_answers(fake_python, tiny_model_dir, tmp_path, adapters)
    assert answers["served"] == answers["hf"]
    assert answers["hf"] != answers["bare"]


@pytest.mark.parametrize("adapters", ["folded", "lora"])
def test_a_skillpack_on_its_fp_path_is_served_as_its_backbone_with_it(fake_python, tiny_model_dir, tmp_path, adapters):
    answers = skillpack_answers(fake_python, tiny_model_dir, tmp_path, adapters)
    assert answers["served"] == answers["hf"]
    assert answers["hf"] != answers["bare"]  # the skillpack changes the answers: the adapter is not ignored


def test_a_delta_on_one_of_two_tied_weights_is_not_folded():
    """PEFT adapts a tied embedding and head apart: folding one delta into their one tensor would change
    both, so only a LoRA request serves it; a delta on both (a skillpack's tied embedding) folds."""
    from skillweave.engines import fold_deltas

    shared, other = torch.ones(3, 2), torch.zeros(2)
    state = {"embed.weight": shared, "head.weight": shared, "norm.weight": other}
    delta = torch.full((3, 2), 0.5)
    assert fold_deltas(state, {"head.weight": delta}) is None
    out = fold_deltas(state, {"head.weight": delta, "embed.weight": delta})
    assert out["embed.weight"] is out["head.weight"] and torch.equal(out["head.weight"], torch.full((3, 2), 1.5))
    assert out["norm.weight"] is other and torch.equal(shared, torch.ones(3, 2))


def test_a_composition_is_served_folded_where_that_is_exact(fake_python, tiny_model_dir, tmp_path):
    """A composition of two skills (CAT's weights, per module) has no LoRA form: the engine serves the backbone
    with sum_k alpha_k A_k B_k folded in, and answers as HF does; weighted apart on the tied embedding and
    head it cannot be folded, and HF decodes it."""
    from skillweave.composition import LowRankSkill, attach_composition, detach_composition

    tok = load_tokenizer(tiny_model_dir)
    tok.padding_side = "left"
    model = load_model(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)

    def skill(name: str, modules: list[str]) -> LowRankSkill:
        factors = {}
        for m in modules:
            w = model.get_submodule(m).weight
            a, b = torch.randn(w.shape[0], 4, generator=g), torch.randn(4, w.shape[1], generator=g)
            factors[m] = (0.3 * a, w.std() * b)
        return LowRankSkill(name, "peft", None, factors)

    linears = sorted(block_linear_names(model))
    skills = [skill("a", linears[::2]), skill("b", linears[1::2])]
    sampling = SamplingConfig(max_new_tokens=12)
    bare = sample_batch(model, tok, PROMPTS, sampling, seed=0, greedy=True)
    alphas = {m: torch.tensor([0.7, 1.3]) for m in linears}
    attach_composition(model, skills, alphas)
    hf = sample_batch(model, tok, PROMPTS, sampling, seed=0, greedy=True)
    with ServedModels(served_ctx(fake_python, tiny_model_dir, "lora"), tmp_path) as served:
        engine = served.engine_for(model)  # folded whatever vllm_adapters says: no LoRA form
        assert engine.label.endswith(", folded")
        served_answers = sample_batch(None, tok, PROMPTS, sampling, seed=0, greedy=True, engine=engine)
        assert served_answers == hf != bare
    detach_composition(model)
    tied = [skill("t", ["model.embed_tokens"]), skill("u", ["lm_head"])]
    tied[1].factors["lm_head"] = tied[0].factors["model.embed_tokens"]
    weights = {"model.embed_tokens": torch.tensor([1.0, 0.0]), "lm_head": torch.tensor([0.0, 0.5])}
    attach_composition(model, tied, weights)
    with ServedModels(served_ctx(fake_python, tiny_model_dir, "folded"), tmp_path) as served:
        assert served.engine_for(model) is None


def test_a_lora_on_a_tied_head_goes_as_a_lora_request(fake_python, tiny_model_dir, tmp_path):
    """eval.vllm_adapters=folded, and a PEFT LoRA on the tied lm_head alone: folding it would change the
    embedding too, so ServedModels serves it as a LoRA request, and its label says so."""
    from peft import LoraConfig, get_peft_model

    model = load_model(tiny_model_dir, dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False))
    with ServedModels(served_ctx(fake_python, tiny_model_dir, "folded"), tmp_path) as served:
        engine = served.engine_for(model)
        assert engine.label.endswith("+ LoRA") and engine.lora is not None


def test_what_vllm_cannot_serve_is_left_to_hf(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = load_model(tiny_model_dir, dtype=torch.float32)
    assert served_form(model) == ("model", None)
    g = torch.Generator().manual_seed(0)
    residual = {k: 0.01 * torch.randn(p.shape, generator=g) for k, p in model.state_dict().items()}
    sp = compress_residual(residual, block_linear_names(model), 8, 8, "math", "fp")
    attach_skillpack(model, sp, int_mm=True)
    assert served_form(model) is None  # vLLM has no int8-activation LoRA
    detach_skillpack(model)
    attach_skillpack(model, sp, int_mm=False)
    assert served_form(model) == ("skillpack", 8) and type(model.model.layers[0].mlp.up_proj).__name__ == "SkillpackLinear"
    detach_skillpack(model)
    assert served_form(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))) == ("peft", 8)
    dora = load_model(tiny_model_dir, dtype=torch.float32)
    assert served_form(get_peft_model(dora, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))) is None
    # Forward hooks (Twin-Merging's deltas) change what a model computes, not the weights an engine loads.
    hooked = load_model(tiny_model_dir, dtype=torch.float32)
    for register in (lambda: hooked.model.layers[0].mlp.up_proj.register_forward_hook(lambda m, a, out: 2 * out),
                     lambda: hooked.register_forward_pre_hook(lambda m, a: None),
                     lambda: torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: out)):
        hook = register()
        assert served_form(hooked) is None
        hook.remove()
        assert served_form(hooked) == ("model", None)


def test_lm_eval_through_the_engine_scores_as_hflm(fake_python, tiny_tokenizer, tmp_path):
    """An untrained model, so that answers are long and stop strings and the token limit both end some."""
    model_dir = tmp_path / "untrained"
    build_tiny_model(tiny_tokenizer, train_steps=0).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    tok, model = load_tokenizer(model_dir), load_model(model_dir, dtype=torch.float32)
    tasks = ["skillweave_arith", "skillweave_ifeval"]
    hf = evaluate(model, tok, tasks, limit=4, max_gen_toks=12, batch_size=3)
    with VLLMEngine(model_dir, python=fake_python, dtype="float32", seed=0, max_model_len=512,
                    log_path=tmp_path / "vllm.log") as engine:
        vllm = evaluate(None, tok, tasks, limit=4, max_gen_toks=12, batch_size=3, engine=engine)
    for task in tasks:
        assert [s["response"] for s in vllm[task]["samples"]] == [s["response"] for s in hf[task]["samples"]]
        assert vllm[task]["score"] == hf[task]["score"]
    assert all(s["response"] for t in tasks for s in hf[t]["samples"])  # not a comparison of empty answers


def test_an_engine_that_cannot_start_is_one_line_naming_its_log(fake_python, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    log = tmp_path / "vllm.log"
    with pytest.raises(EngineError, match="fake engine told to fail") as e:
        VLLMEngine(tiny_model_dir, python=fake_python, dtype="float32", seed=0, max_model_len=64, log_path=log)
    assert str(log) in str(e.value) and "Traceback" in log.read_text()


@pytest.fixture(scope="module")
def vllm_runs(tmp_path_factory, tiny_model_dir, fake_python):
    tmp = tmp_path_factory.mktemp("vllm-runs")
    hf = overrides(tmp, tiny_model_dir, "stage=generate", "domain=math", "model.generation_backend=hf")
    vllm = [*hf[:-1], "model.generation_backend=vllm", f"model.vllm_python={fake_python}"]
    return tmp, run_overrides(hf), run_overrides(vllm), vllm


def test_generate_through_vllm_is_its_own_artifact(vllm_runs):
    _, hf, vllm, _ = vllm_runs
    (h,), (v,) = hf.values(), vllm.values()
    assert h.key != v.key
    config, manifest = (json.loads((v.path / f).read_text()) for f in ("config.json", "manifest.json"))
    assert config["config"]["backend"] == {"name": "vllm", "request_seed": False}
    assert "backend" not in json.loads((h.path / "config.json").read_text())["config"]
    assert manifest["metrics"]["backend"] == "vllm 0.0+fake"
    rows = [json.loads(line) for line in v.file("samples").read_text().splitlines()]
    hf_rows = [json.loads(line) for line in h.file("samples").read_text().splitlines()]
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(r["prompt_id"], r["sample"]) for r in hf_rows]
    assert not list(v.path.glob(".vllm-model*"))


def test_a_later_round_serves_the_policy_through_the_engine(vllm_runs):
    tmp, _, _, vllm = vllm_runs
    for stage in ("filter", "dpo"):  # round 0 on the vLLM samples, then round 1's sampling
        run_overrides([o for o in vllm if o != "stage=generate"] + [f"stage={stage}"])
    run_overrides([*vllm, "dpo.rounds=2"])
    (ref,) = [p for p in (tmp / "artifacts" / "generate").iterdir()
              if json.loads((p / "config.json").read_text())["config"].get("round") == 1]
    manifest = json.loads((ref / "manifest.json").read_text())
    assert manifest["metrics"]["policy"] is not None and manifest["metrics"]["backend"] == "vllm 0.0+fake"
    assert not list(ref.glob(".vllm-model*"))  # the policy's weights were written for the engine, then removed


def test_eval_serves_plain_models_and_fp_skillpacks_by_vllm_and_the_integer_path_by_hf(tmp_path, tiny_model_dir, fake_python):
    """The fake engine decodes as transformers does, so every row scores as with eval.backend=hf; a skillpack
    on the integer path is scored by HF, on the fp path by the engine (folded in, or as a LoRA adapter); each
    row says what served it."""
    ov = overrides(tmp_path, tiny_model_dir, "stage=eval", "domains=[math]", "eval.configurations=[base,dpo,skillweave]",
                   "eval.limit=3", "eval.max_gen_toks=12")
    (hf,) = [r for name, r in run_overrides([o for o in ov if o != "stage=eval"]).items() if name.split("/")[0] == "eval"]
    (vllm,) = [r for name, r in run_overrides([*ov, "eval.backend=vllm", f"model.vllm_python={fake_python}",
                                                                   "model.generation_backend=hf"]).items()
               if name.split("/")[0] == "eval"]
    rows = {r["name"]: r for r in json.loads(vllm.file("results").read_text())["configurations"]}
    hf_rows = {r["name"]: r for r in json.loads(hf.file("results").read_text())["configurations"]}
    assert {n: r["details"]["served_by"] for n, r in rows.items()} == {
        "base": {"math": "vllm 0.0+fake"}, "dpo": {"math": "vllm 0.0+fake"}, "skillweave": {"math": "hf"}}
    assert {n: r["scores"] for n, r in rows.items()} == {n: r["scores"] for n, r in hf_rows.items()}
    assert {r["row"] for r in rows.values()}.isdisjoint(r["row"] for r in hf_rows.values())  # keyed by the backend
    for name in ("base", "dpo"):
        answers = [(vllm.path / "samples" / f"{name}-math.jsonl"), (hf.path / "samples" / f"{name}-math.jsonl")]
        assert answers[0].read_text() == answers[1].read_text()
    assert not list((tmp_path / "artifacts").rglob(".vllm-model*"))

    # On its fp path a skillpack is served too: its backbone (dense residuals in) with its factors folded in
    # (eval.vllm_adapters=folded, the default) or as a LoRA; skillweave_intcheck scores the integer path (HF)
    # on the first documents, paired with the served row.
    fp = [*ov, "eval.configurations=[skillweave]", "eval.integer_path=false"]
    (hf_fp,) = [r for name, r in run_overrides(fp).items() if name.split("/")[0] == "eval"]
    served = [*fp, "eval.configurations=[skillweave,skillweave_intcheck]", "eval.integer_check_docs=2",
              "eval.compare_to=[skillweave]", "eval.backend=vllm", f"model.vllm_python={fake_python}",
              "model.generation_backend=hf"]
    (folded,) = [r for name, r in run_overrides(served).items() if name.split("/")[0] == "eval"]
    (lora,) = [r for name, r in run_overrides([*served, "eval.vllm_adapters=lora"]).items()
               if name.split("/")[0] == "eval"]
    (hf_row,) = json.loads(hf_fp.file("results").read_text())["configurations"]
    rows = {}
    for ref, label in ((folded, "vllm 0.0+fake, folded"), (lora, "vllm 0.0+fake + LoRA")):
        row, check = json.loads(ref.file("results").read_text())["configurations"]
        assert row["details"]["served_by"] == {"math": label}
        assert row["scores"] == hf_row["scores"] and row["bytes"] == hf_row["bytes"]
        answers = [r.path / "samples" / "skillweave-math.jsonl" for r in (ref, hf_fp)]
        assert answers[0].read_text() == answers[1].read_text()
        rows[label] = row["row"]
    assert len(set(rows.values())) == 2  # the row is keyed by how its skillpack was served
    assert not list((tmp_path / "artifacts").rglob(".vllm-*"))
    integer = [json.loads(line) for line in (hf.path / "samples" / "skillweave-math.jsonl").open()]  # eval.integer_path
    checked = [json.loads(line) for line in (lora.path / "samples" / "skillweave_intcheck-math.jsonl").open()]
    assert check["n"] == {"math": 2} and check["vs_skillweave"]["math"]["n"] == 2 and check["bytes"] == row["bytes"]
    assert [(r["doc_id"], r["response"]) for r in checked] == [(r["doc_id"], r["response"]) for r in integer[:2]]
    assert "Paired with skillweave" in lora.file("table").read_text()


def test_eval_backend_vllm_without_vllm_is_one_line(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="^eval.backend=vllm: no vLLM environment"):
        run_overrides(overrides(tmp_path, tiny_model_dir, "stage=eval", "eval.backend=vllm",
                                f"model.vllm_python={tmp_path / 'none'}"))
    with pytest.raises(ConfigError, match="eval.backend=auto"):
        run_overrides(overrides(tmp_path, tiny_model_dir, "stage=eval", "eval.backend=auto"))


def test_the_engine_worker_and_its_processes_die_with_the_process_that_started_it(tmp_path):
    """A stage killed mid-request (SIGKILL, the OOM killer) must not leave its engine holding memory: the
    worker asks Linux for SIGTERM when its parent dies, and takes its process group (vLLM's engine core and
    model worker) with it. Here a parent starts a worker, in a session of its own as VLLMEngine does, which
    calls die_with_parent and starts a sleeper of its own; then the parent kills itself. Without the call the
    worker would outlive it by a minute; without the group kill, the sleeper would."""
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    worker = Path(skillweave.__file__).with_name("vllm_worker.py")
    child = ("import importlib.util, subprocess, sys, time; "
             f"s = importlib.util.spec_from_file_location('w', {str(worker)!r}); "
             "w = importlib.util.module_from_spec(s); s.loader.exec_module(w); w.die_with_parent(); "
             "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             "print(g.pid, flush=True); time.sleep(60)")
    parent = (f"import os, signal, subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}], "
              "stdout=subprocess.PIPE, text=True, start_new_session=True); "
              "print(p.pid, p.stdout.readline().strip(), flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL
    pids = [int(pid) for pid in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.time() + 10
    while time.time() < deadline and _running(pids[0]):
        time.sleep(0.1)
    assert _running(pids[0]) == []


def _running(group: int) -> list[int]:
    """The group's processes that still run (a zombie waits for its reaper and holds nothing)."""
    return [pid for pid, (state, _) in process_group(group).items() if state != "Z"]


def test_process_group_finds_every_process_of_a_group_and_the_cpu_it_used():
    """What an engine's cost and its clean-up are read from: a leader of its own group whose child burns
    ~0.3 s of CPU; both are found with their CPU time, nothing outside the group is, and none after a kill."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("reads Linux's /proc")
    burn = "import time; t = time.process_time(); exec('while time.process_time() - t < 0.3: pass'); time.sleep(60)"
    leader = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; "
                               f"c = subprocess.Popen([sys.executable, '-c', {burn!r}]); print(c.pid, flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(leader.stdout.readline())
        deadline = time.time() + 20
        while time.time() < deadline and process_group(leader.pid).get(child, ("", 0.0))[1] < 0.3:
            time.sleep(0.1)
        found = process_group(leader.pid)
        assert sorted(found) == sorted([leader.pid, child])
        assert found[child][1] >= 0.3 and found[child][0] in "RS"
        assert os.getpid() not in found
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _running(leader.pid):
        time.sleep(0.1)
    assert _running(leader.pid) == []
