"""The learned router, Twin-Merging's routed exclusive deltas, and the routed eval configurations."""

from __future__ import annotations

import copy
import json
import math
import random
import shutil

import pytest
import torch
from safetensors.torch import save_file

from skillweave.models import load_model, load_tokenizer
from skillweave.router import (
    RouterError,
    TwinMerging,
    accuracy,
    confusion_matrix,
    load_router,
    prompt_features,
    router_nbytes,
    save_router,
    stack_exclusive,
    train_router,
)
from skillweave.config import ZipConfig
from skillweave.core.compressors import COMPRESSORS, CompressContext
from skillweave.deltas import add_delta, param_bytes
from skillweave.zip import block_linear_names

NUMBER_WORDS = "one two three four five six seven eight nine zero sum add".split()
CODE_WORDS = "def return print list yes no the a".split()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from threads (see tests/test_zip.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def family(words: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(4, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def toy_split(backbone):
    """Two clearly different prompt families (number words vs code words): features and labels."""
    model, tok = backbone

    def split(seed: int, n: int):
        prompts = family(NUMBER_WORDS, n, seed) + family(CODE_WORDS, n, seed + 1)
        return prompt_features(model, tok, prompts, batch_size=8), torch.tensor([0] * n + [1] * n)

    return split(0, 12), split(100, 6)  # train, held out (other draws of the same families)


@pytest.fixture(scope="module")
def router(toy_split):
    (x, y), _ = toy_split
    return train_router(x, y, ["math", "code"], "fp-backbone", steps=200)


def test_router_learns_a_separable_split(router, toy_split):
    (x, y), (x_held, y_held) = toy_split
    assert accuracy(router, x, y) == 1.0
    assert accuracy(router, x_held, y_held) == 1.0
    assert confusion_matrix(y_held, router.predict(x_held), 2) == [[6, 0], [0, 6]]
    probs = router.probs(x_held)
    torch.testing.assert_close(probs.sum(-1), torch.ones(12))
    assert router.meta["counts"] == {"math": 12, "code": 12}


def test_router_training_is_deterministic(router, toy_split):
    (x, y), _ = toy_split
    again = train_router(x, y, ["math", "code"], "fp-backbone", steps=200)
    assert torch.equal(again.weight, router.weight) and torch.equal(again.bias, router.bias)


@pytest.mark.parametrize(
    "labels, predicted, k, expected",
    [
        ([0, 0, 1], [0, 1, 1], 2, [[1, 1], [0, 1]]),  # one math prompt sent to code
        ([2, 2], [0, 0], 3, [[0, 0, 0], [0, 0, 0], [2, 0, 0]]),  # rows are the true domain
        ([], [], 2, [[0, 0], [0, 0]]),  # nothing routed
    ],
)
def test_confusion_matrix(labels, predicted, k, expected):
    assert confusion_matrix(labels, predicted, k) == expected


def test_train_router_refuses_a_domain_without_prompts():
    with pytest.raises(ValueError, match=r"no training prompts for domain\(s\) \['code'\]"):
        train_router(torch.randn(3, 4), torch.tensor([0, 0, 0]), ["math", "code"], "fp")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},  # no step taken: there would be no loss to report and an untrained head
        {"steps": -1},
        {"lr": 0.0},  # Adam would never move from the zero init
        {"lr": float("nan")},
        {"weight_decay": -1e-3},  # a negative penalty rewards large weights
    ],
)
def test_train_router_refuses_bad_training_settings(kwargs):
    with pytest.raises(ValueError, match=r"train_router needs steps >= 1, lr > 0, weight_decay >= 0"):
        train_router(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), ["math", "code"], "fp", **kwargs)


def test_save_load_round_trip_and_wrong_backbone(router, toy_split, tmp_path):
    (x, _), _ = toy_split
    path = tmp_path / "router.safetensors"
    save_router(router, path)
    loaded = load_router(path, expected_fingerprint="fp-backbone")
    assert loaded.domains == ["math", "code"] and loaded.backbone_fingerprint == "fp-backbone"
    assert loaded.meta == router.meta
    assert torch.equal(loaded.probs(x), router.probs(x))
    assert router_nbytes(loaded) == 4 * (2 * x.shape[1] + 2 + 2 * x.shape[1])
    with pytest.raises(RouterError, match="trained on the features of backbone fp-backbone, this model is other"):
        load_router(path, expected_fingerprint="other")
    not_a_router = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(not_a_router))
    with pytest.raises(RouterError, match="not a router"):
        load_router(not_a_router)
    with pytest.raises(RouterError, match="does not exist"):
        load_router(tmp_path / "missing.safetensors")


def test_pooled_features_ignore_left_padding(backbone):
    """A left-padded row reads as the prompt alone (position ids from the mask, as generate() makes)."""
    model, tok = backbone
    short, long = "one two", "def return print list yes no the a"
    alone = prompt_features(model, tok, [short], batch_size=1)
    together = prompt_features(model, tok, [short, long], batch_size=2)  # padded to the long one
    torch.testing.assert_close(together[0:1], alone, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- Twin-Merging


def random_residuals(model, names, k: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    sd = model.state_dict()
    return [
        {f"{n}.weight": 0.05 * sd[f"{n}.weight"].std() * torch.randn(sd[f"{n}.weight"].shape, generator=g) for n in names}
        for _ in range(k)
    ]


def twin_factors(residuals, names, rank: int):
    """Each domain's residual through the `twin` compressor, stacked in router order, as twin_merging does."""
    ctx = CompressContext(frozenset(names), zip=ZipConfig(rank=rank, smoothing="none"))
    return stack_exclusive([COMPRESSORS.get("twin").compress(r, ctx).factors() for r in residuals])


def test_stacking_needs_a_domain_and_the_same_linears_in_each():
    a, b = torch.zeros(4, 2, dtype=torch.float16), torch.zeros(2, 3, dtype=torch.float16)
    with pytest.raises(ValueError, match="at least one domain"):
        stack_exclusive([])
    with pytest.raises(ValueError, match="cover different linears"):
        stack_exclusive([{"q": (a, b)}, {"k": (a, b)}])
    assert stack_exclusive([{"q": (a, b)}, {"q": (a, b)}])["q"].a.shape == (2, 4, 2)


def test_twin_hooks_with_one_hot_weights_equal_backbone_plus_that_domains_delta(backbone):
    model, tok = backbone
    names = sorted(block_linear_names(model))
    factors = twin_factors(random_residuals(model, names, 3), names, rank=4)
    assert all(f.a.shape[:1] == f.b.shape[:1] == (3,) and f.a.dtype == torch.float16 for f in factors.values())
    ids = tok(["one two three def return", "yes no"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**ids).logits
        expected = [  # theta_merged + domain k's reconstructed exclusive delta, in the weights
            add_delta(copy.deepcopy(model), {f"{n}.weight": f.reconstruct(k) for n, f in factors.items()})(**ids).logits
            for k in range(3)
        ]
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    twin = TwinMerging(["math", "code", "instructions"], factors)
    twin.attach(model)
    try:
        for k in range(3):
            twin.weights = torch.nn.functional.one_hot(torch.tensor(k), 3).float()
            with torch.no_grad():
                hooked = model(**ids).logits
            assert (hooked - expected[k]).norm() / expected[k].norm() < 1e-5
            assert (hooked - before).norm() / before.norm() > 1e-4  # the delta does something
    finally:
        twin.detach()
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, before)  # hooks gone, weights untouched
    assert all(torch.equal(v, before_state[k]) for k, v in model.state_dict().items())


def test_twin_routes_each_row_at_prefill_and_keeps_it_while_decoding(backbone, router):
    model, tok = backbone
    names = sorted(block_linear_names(model))
    twin = TwinMerging(["math", "code"], twin_factors(random_residuals(model, names, 2), names, rank=2), router)
    prompts = ["one two three four", "def return print list yes no the a"]
    expected = router.probs(prompt_features(model, tok, prompts, batch_size=1))
    from skillweave.models import chat_prompt

    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok([chat_prompt(tok, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    assert (enc["attention_mask"][0] == 0).any()  # the short prompt is left-padded
    twin.attach(model)
    try:
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    finally:
        twin.detach()
    (weights,) = twin.history  # one prefill; the three decode steps kept its weights
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=1e-5)
    assert weights.argmax(-1).tolist() == [0, 1]


@pytest.mark.parametrize(
    "scores",
    [
        [1.0, 0.0],  # two docs, one right
        [1.0, 1.0, 0.0, 0.0, 1.0],  # an odd count
        [0.25, 0.5, 1.0],  # fractional scores (pass@k, rule scores)
    ],
)
def test_recombined_stderr_is_lm_evals(scores):
    from lm_eval.api.metrics import mean_stderr

    from skillweave.eval_configs.routed import mean_with_stderr

    mean, stderr = mean_with_stderr(scores)
    assert mean == pytest.approx(sum(scores) / len(scores)) and stderr == pytest.approx(mean_stderr(scores))


def test_one_doc_has_no_stderr():
    from skillweave.eval_configs.routed import mean_with_stderr

    mean, stderr = mean_with_stderr([1.0])
    assert mean == 1.0 and math.isnan(stderr)  # as lm-eval reports "N/A" for a single doc


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def routed_run(tmp_path_factory, tiny_model_dir):
    from test_pipeline import overrides, run_overrides

    tmp = tmp_path_factory.mktemp("routed")
    ov = overrides(tmp, tiny_model_dir, "domains=[math,instructions]", "eval.configurations=[skillweave_routed,twin_merging]")
    refs = run_overrides(ov)
    refs["overrides"] = ov
    return refs


def test_routed_groups_on_the_fp_path_are_served_by_the_engine(routed_run, fake_vllm_python):
    """eval.backend=vllm: each routed group's skillpack (fp path) goes through the engine, folded into the
    backbone's weights; the fake engine decodes as transformers does, so every routed answer is HF's."""
    from test_pipeline import run_overrides

    ov = [*routed_run["overrides"], "stage=eval", "eval.configurations=[skillweave_routed]", "eval.integer_path=false"]
    (hf,) = run_overrides(ov).values()
    (vllm,) = run_overrides([*ov, "eval.backend=vllm", f"model.vllm_python={fake_vllm_python}",
                             "model.generation_backend=hf"]).values()  # the same samples: the same skillpacks
    (row,) = json.loads(vllm.file("results").read_text())["configurations"]
    assert row["details"]["served_by"] == {"instructions": "vllm 0.0+fake, folded", "math": "vllm 0.0+fake, folded"}
    (hf_row,) = json.loads(hf.file("results").read_text())["configurations"]
    assert "served_by" not in hf_row["details"] and row["scores"] == hf_row["scores"]
    for d in ("math", "instructions"):
        answers = [(r.path / "samples" / f"skillweave_routed-{d}.jsonl").read_text() for r in (vllm, hf)]
        assert answers[0] == answers[1]


def test_twin_merging_is_scored_by_hf_under_the_vllm_backend(routed_run, fake_vllm_python):
    """Twin-Merging's routed deltas are forward hooks on the merged backbone: an engine loading its weights
    scores the merge alone. It did so in the paper table's first run (answers identical to merged_ties',
    router weights never computed); hooked models are HF's (engines.servable)."""
    from test_pipeline import run_overrides

    ov = [*routed_run["overrides"], "stage=eval", "eval.configurations=[twin_merging]"]
    (hf,) = run_overrides(ov).values()
    (vllm,) = run_overrides([*ov, "eval.backend=vllm", f"model.vllm_python={fake_vllm_python}",
                             "model.generation_backend=hf"]).values()
    (row,), (hf_row,) = (json.loads(r.file("results").read_text())["configurations"] for r in (vllm, hf))
    assert row["details"]["served_by"] == {"instructions": "hf", "math": "hf"}
    assert row["details"]["mean_weights"] == hf_row["details"]["mean_weights"]
    assert all(len(w) == 2 for w in row["details"]["mean_weights"].values())
    assert row["scores"] == hf_row["scores"]


def test_twin_merging_decodes_eagerly_where_decode_would_be_compiled(routed_run):
    """Its router reads the prompt's 2-D attention mask in a pre-hook, which the compiled decode's static cache
    replaces: the paper table's twin_merging row stopped with a RuntimeError on IFEval, the first task long
    enough for `model.compiled_decode=auto` to compile. A hooked model decodes eagerly (and keeps its routing)."""
    from test_pipeline import run_overrides

    from skillweave import decoding

    assert decoding.unavailable(torch.device("cpu")) is None  # without a compiler here, this test tests nothing
    ov = [*routed_run["overrides"], "stage=eval", "eval.configurations=[twin_merging]", "eval.batch_size=3",
          "model.compiled_decode=on"]  # a row of its own (not routed_run's), both prompts in one padded batch
    (ref,) = run_overrides(ov).values()
    (row,) = json.loads(ref.file("results").read_text())["configurations"]
    assert row["n"] == {"math": 2, "instructions": 2}
    assert all(len(w) == 2 and sum(w) == pytest.approx(1.0, abs=1e-3) for w in row["details"]["mean_weights"].values())


def test_twin_merging_row_from_reused_cells_keeps_its_router_weights(routed_run, tmp_path):
    """The router's weights are kept in each domain's cell: a row put together from cells of an earlier run
    reports them (the paper table's twin_merging row, its code cell reused, had null weights for code)."""
    from test_pipeline import run_overrides

    rows = json.loads(routed_run["eval"].file("results").read_text())["configurations"]
    (entry,) = [r for r in rows if r["name"] == "twin_merging"]
    row_dir = routed_run["eval"].root / entry["row"]
    before = json.loads((row_dir / "row.json").read_text())
    assert all(w is not None for w in before["details"]["mean_weights"].values())
    cells = {p: p.stat().st_mtime_ns for p in routed_run["eval"].root.glob("eval_cells/twin_merging-*/manifest.json")}
    assert cells
    shutil.move(row_dir, tmp_path / "row")  # the row goes; its cells stay
    # Another budget: another eval artifact (not the fixture's, complete), the same row and cell keys.
    (ref,) = run_overrides([*routed_run["overrides"], "stage=eval", "eval.configurations=[twin_merging]",
                            "eval.budget_bytes=1000000000"]).values()
    (row,) = json.loads(ref.file("results").read_text())["configurations"]
    assert row["row"] == entry["row"]
    assert json.loads((row_dir / "row.json").read_text()) == before
    assert {p: p.stat().st_mtime_ns for p in cells} == cells  # reused, none scored again


def test_routed_configurations_run_end_to_end(routed_run):
    refs = routed_run
    route = refs["eval-input/route"]
    metrics = route.manifest()["metrics"]
    assert metrics["domains"] == ["math", "instructions"] and set(metrics["prompts"]) == {"math", "instructions"}
    assert 0.0 <= metrics["train_accuracy"] <= 1.0
    assert (route.path / "router.safetensors").is_file()
    results = json.loads((refs["eval"].path / "results.json").read_text())
    rows = {r["name"]: r for r in results["configurations"]}
    assert list(rows) == ["skillweave_routed", "twin_merging"]

    routed = rows["skillweave_routed"]
    details = routed["details"]
    matrix = details["confusion"]["matrix"]
    assert details["confusion"]["domains"] == ["math", "instructions"]
    assert [sum(row) for row in matrix] == [2, 2]  # limit 2 docs per true domain
    assert details["router_accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 4)
    for d in ("math", "instructions"):
        docs = [json.loads(line) for line in (refs["eval"].path / "samples" / f"skillweave_routed-{d}.jsonl").open()]
        assert all(doc["routed_to"] in ("math", "instructions") and doc["response"] is not None for doc in docs)
        scores = [doc["score"] for doc in docs]
        assert routed["n"][d] == 2 and routed["scores"][d] == pytest.approx(sum(scores) / 2)
        spread = abs(scores[0] - scores[1]) / 2  # sample std / sqrt(2) of two scores
        assert routed["stderr"][d] == pytest.approx(spread)

    twin = rows["twin_merging"]
    for d in ("math", "instructions"):
        assert twin["n"][d] == 2 and 0.0 <= twin["scores"][d] <= 1.0
        weights = twin["details"]["mean_weights"][d]
        assert len(weights) == 2 and sum(weights) == pytest.approx(1.0, abs=1e-3)
    assert not math.isnan(twin["average"])

    # Bytes: the one merged backbone + what each configuration adds beside it + the router.
    backbone = load_model(refs["merge"].path / "backbone")
    router_bytes = router_nbytes(load_router(route.path / "router.safetensors"))
    skillpacks = sum(refs[f"zip/{d}"].manifest()["metrics"]["bytes"] for d in ("math", "instructions"))
    assert routed["bytes"] == param_bytes(backbone) + skillpacks + router_bytes
    rank = 4  # recipe tiny: zip.rank
    factors = sum(2 * 2 * rank * sum(m.weight.shape) for n, m in backbone.named_modules() if n in block_linear_names(backbone))
    assert twin["bytes"] == param_bytes(backbone) + factors + router_bytes


def test_a_killed_routed_row_resumes_after_its_last_scored_group(routed_run, tmp_path, monkeypatch):
    """Each routed group (the docs routed to one skillpack) is a cell of the row: rerun with the row and one
    group gone, only that group is decoded again, and the row reads as before. In a copy of the store, with
    the docs routed alternately (the tiny router sends all to one skillpack)."""
    import skillweave.eval_configs.routed as routed
    from test_pipeline import run_overrides

    store = tmp_path / "artifacts"
    shutil.copytree(routed_run["eval"].path.parent.parent, store)
    real_router = routed._router_for

    def alternating(ctx, refs, fp):
        router = real_router(ctx, refs, fp)
        router.predict = lambda features: torch.arange(len(features)) % 2
        return router

    monkeypatch.setattr(routed, "_router_for", alternating)
    decoded = []
    real_evaluate = routed.evaluate
    monkeypatch.setattr(routed, "evaluate", lambda *a, **k: (decoded.append(k["doc_ids"]), real_evaluate(*a, **k))[1])
    ov = [*routed_run["overrides"], "stage=eval", "eval.configurations=[skillweave_routed]", f"artifacts_root={store}"]
    for row in (store / "eval_rows").glob("skillweave_routed-*"):
        shutil.rmtree(row)  # the row made with the real router
    (first,) = run_overrides(ov).values()
    before = json.loads(first.file("results").read_text())["configurations"][0]
    assert len(decoded) == 2 and before["details"]["confusion"]["matrix"] == [[1, 1], [1, 1]]

    (store / before["row"] / "manifest.json").unlink()
    (first.path / "manifest.json").unlink()
    (cell,) = (store / "eval_cells").glob("skillweave_routed-to-instructions-*")  # the real router sent none there
    (cell / "manifest.json").unlink()
    decoded.clear()
    (again,) = run_overrides(ov).values()
    group = {t: [r["doc_id"] for r in v["samples"]] for t, v in json.loads((cell / "result.json").read_text())["tasks"].items()}
    assert decoded == [group]  # the lost group alone
    after = json.loads(again.file("results").read_text())["configurations"][0]
    keys = ("scores", "stderr", "n", "details")
    assert {k: after[k] for k in keys} == {k: before[k] for k in keys}


def test_route_alone_names_the_command_for_its_missing_input(tmp_path, tiny_model_dir):
    from test_pipeline import overrides, run_overrides

    from skillweave.core.artifacts import MissingArtifactError

    with pytest.raises(MissingArtifactError, match=r"stage route needs the merge artifact .*run `python -m skillweave stage=merge"):
        run_overrides(overrides(tmp_path, tiny_model_dir, "stage=route"))
