"""The checks of scripts/device_check.sh that are not benchmarks, on a GPU (`--device cuda`) or, to test
this script, on a CPU with bf16 units (`--device cpu`: tests/test_device_check.py).

1. Stage dpo through the command line (`python -m skillweave`, recipe=tiny) on a tiny random Llama, in
   float32 and in dpo.precision=bfloat16: generate -> filter -> dpo of the code domain, whose reference
   answers stand as chosen against the model's failing samples (filter.strategy=reference_vs_fail),
   so a random model makes pairs. Per precision: the manifest's precision and steps, the delta's
   dtypes; and the bf16 delta's relative distance to the fp32 one.
2. The skillpack's integer path against its fp path: a random residual of a tiny Llama (hidden 64)
   compressed to an INT8 rank-16 skillpack, attached both ways on the device (and on the CPU, the
   reference): per layer the relative error of the int delta against the fp delta on 48 tokens
   (the CUDA kernel needs more than 16) and the kernel that ran (`_int_mm`, or the fp fallback where
   cuBLASLt does not take the shape), and the relative error of the int path's change of the logits.

    python scripts/device_check.py --device cuda --out "$OUT"    # writes $OUT/device_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from dpo_step import TINY_SHAPE, random_model_dir  # noqa: E402  (bench/ is no package)

from skillweave.core.artifacts import atomic_write_json  # noqa: E402
from skillweave.deltas import load_delta  # noqa: E402
from skillweave.models import native_bf16  # noqa: E402

INT_TOKENS = 48


def dpo_stage(device: str, scratch: Path) -> dict:
    """Stage dpo of the tiny pipeline in float32 and bfloat16, through `python -m skillweave`."""
    model_dir = random_model_dir(TINY_SHAPE, scratch / "model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    result, deltas = {}, {}
    for precision in ("float32", "bfloat16"):
        # max_length 1024: the code tasks' prompts and reference answers, in the tiny tokenizer's tokens;
        # sampling by HF: what is checked is the DPO (and the tiny model's heads are too narrow for vLLM on a CPU)
        args = ["recipe=tiny", "model=hf_dir", f"model.path={model_dir}", f"artifacts_root={scratch / 'artifacts'}",
                "model.generation_backend=hf",
                "pipeline=[generate,filter,dpo]", "domains=[code]", "filter.strategy=reference_vs_fail",
                "dpo.max_length=1024", f"dpo.precision={precision}", f"hydra.run.dir={scratch / 'run'}", "threads=1"]
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "skillweave", *args], cwd=scratch, env=env,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"stage dpo, {precision}: {proc.stderr[-2000:]}")
        (dpo,) = [p for p in (scratch / "artifacts" / "dpo").iterdir()
                  if json.loads((p / "config.json").read_text())["config"]["dpo"]["precision"] == precision]
        metrics = json.loads((dpo / "manifest.json").read_text())["metrics"]
        deltas[precision] = load_delta(dpo / "delta.safetensors")
        result[precision] = {
            "seconds": round(time.perf_counter() - started, 1),
            "precision_recorded": metrics["precision"],
            "steps": metrics["steps"],
            "first_loss": metrics["first_loss"],
            "last_loss": metrics["last_loss"],
            "delta_dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in deltas[precision].values()}),
            "relative_weight_change": metrics["relative_weight_change"],
        }
    d32, d16 = deltas["float32"], deltas["bfloat16"]
    diff = sum(float((d16[k] - d32[k]).double().pow(2).sum()) for k in d32) ** 0.5
    result["relative_diff_bf16_vs_fp32"] = diff / sum(float(t.double().pow(2).sum()) for t in d32.values()) ** 0.5
    return result


def int_vs_fp(device: torch.device) -> dict:
    """The integer path's error against the fp path on `device`, per layer and on the logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from skillweave.zip import SkillpackLinear, attach_skillpack, block_linear_names, compress_residual, detach_skillpack
    from skillweave.zip.kernels import _int_mm_accepts

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm()).item()

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    residual = {k: 0.05 * p.std().item() * torch.randn(p.shape, generator=g) for k, p in model.state_dict().items()
                if p.ndim == 2}
    sp = compress_residual(residual, block_linear_names(model), 16, 8, "check", "random")
    model.to(device)
    layers = {}
    for name, factors in sp.factors.items():
        linear = model.get_submodule(name)
        x = torch.randn(INT_TOKENS, linear.in_features, generator=g).to(device)
        fp = SkillpackLinear(linear, factors).delta(x)
        taken = _int_mm_accepts(INT_TOKENS, linear.in_features, factors.rank, device) and _int_mm_accepts(
            INT_TOKENS, factors.rank, linear.out_features, device)
        layers[name] = {"rel_error": rel(SkillpackLinear(linear, factors, int_mm=True).delta(x), fp),
                        "kernel": "int_mm" if taken else "fp_fallback"}
    ids = torch.randint(0, 128, (2, INT_TOKENS // 2), generator=g).to(device)
    with torch.no_grad():
        base = model(ids).logits
        attach_skillpack(model, sp)
        fp_logits = model(ids).logits
        detach_skillpack(model)
        attach_skillpack(model, sp, int_mm=True)
        int_logits = model(ids).logits
        detach_skillpack(model)
    return {
        "tokens": INT_TOKENS,
        "rank": 16,
        "max_layer_rel_error": max(v["rel_error"] for v in layers.values()),
        "kernels": sorted({v["kernel"] for v in layers.values()}),
        "logits_change_rel_error": ((int_logits - fp_logits).norm() / (fp_logits - base).norm()).item(),
        "layers": layers,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--out", type=Path, required=True, help="folder for device_check.json")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if not native_bf16(cuda=args.device == "cuda"):
        p.error(f"--device {args.device}: no bf16 units there, so dpo.precision=bfloat16 is refused")
    import transformers
    import trl

    started = time.perf_counter()
    devices = ["cpu"] + (["cuda"] if args.device == "cuda" else [])
    with tempfile.TemporaryDirectory(prefix="device_check-") as tmp:
        result = {
            "command": " ".join(["python", "scripts/device_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "dpo_stage": dpo_stage(args.device, Path(tmp)),
            "skillpack_int_vs_fp": {d: int_vs_fp(torch.device(d)) for d in devices},
        }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "device_check.json", result)
    print(json.dumps({k: result[k] for k in ("device_name", "dpo_stage")}, indent=1))
    for d, r in result["skillpack_int_vs_fp"].items():
        print(f"{d}: int vs fp max layer error {r['max_layer_rel_error']:.4f}, logits {r['logits_change_rel_error']:.4f}, "
              f"kernels {r['kernels']}")
    return result


if __name__ == "__main__":
    main()
