"""The kill -9 matrix: every stage of the tiny pipeline killed part-way, rerun, and compared with an
uninterrupted run, file by file (`make kill-matrix`; a few minutes on 2 cores).

For each stage and each kill point (a fraction of that stage's uninterrupted duration), a copy of the
uninterrupted store loses that stage's artifacts and everything after them; `stage=all` is started on it
and its whole process group gets SIGKILL that long after the stage's directory appears; then `stage=all`
runs again to the end. Every file of every artifact is compared with the uninterrupted run by the sha256
its manifest records. DPO resumed from a checkpoint is not bit-identical to an uninterrupted run (the
optimizer's state is restored, the data order too, but floating-point sums differ in the last bits):
for it the largest difference of the delta is printed instead.

    python scripts/kill_matrix.py [--out kill_matrix.json] [--points 0.3,0.7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("generate", "filter", "dpo", "merge", "zip", "eval")
DOWNSTREAM = {s: STAGES[i:] for i, s in enumerate(STAGES)}

DOMAIN = '''
"""km: short prompts the tiny model answers briefly; an even word count passes (about half do)."""

from pathlib import Path

from skillweave.eval_tasks import EvalTask, register_eval_task
from skillweave.prompts import PROMPT_SOURCES, check_n, row, take
from skillweave.rules import RuleResult, rule

WORDS = "the a one two three four five six seven eight nine zero def return print add sum list yes no".split()


@PROMPT_SOURCES.register("km_short_prompts")
def short_prompts(n, seed):
    check_n(n, "km_short_prompts")
    return take([row(f"say {w} and {w}", {"word": w}) for w in WORDS[seed % 3:]], n, "km_short_prompts")


@rule("km_even_word_count")
def even_word_count(sample):
    n = len(sample["response"].split())
    return RuleResult(n % 2 == 0, float(n % 2 == 0), f"{n} words")


register_eval_task(EvalTask("skillweave_km", Path(__file__).with_name("skillweave_km.yaml"), "even",
                            lambda: ["say yes", "say no"], digest_files=(Path(__file__).with_name("scoring.py"),)))
'''
SCORING = '''
from skillweave.eval_tasks import as_dataset


def load_docs(**_):
    return as_dataset([{"id": f"km/{w}", "prompt": f"say {w}"} for w in ("yes", "no", "sum", "list")])


def process_results(doc, results):
    return {"even": float(len(results[0].split()) % 2 == 0)}
'''
TASK = """task: skillweave_km
custom_dataset: !function scoring.load_docs
test_split: test
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: prompt
generation_kwargs: {until: ["<|im_end|>"], do_sample: false}
process_results: !function scoring.process_results
metric_list: [{metric: even, aggregation: mean, higher_is_better: true}]
metadata: {version: 1.0}
"""


def setup(work: Path) -> list[str]:
    """The tiny model, the km domain (two copies: km1, km2) and the overrides of every run."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_model, build_tokenizer

    import random

    rng = random.Random(0)
    words = "the a one two three four five six seven eight nine zero def return print add sum list yes no".split()
    tok = build_tokenizer([" ".join(rng.choices(words, k=12)) for _ in range(200)])
    build_tiny_model(tok).save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    folder = work / "km"
    folder.mkdir()
    (folder / "__init__.py").write_text(DOMAIN)
    (folder / "scoring.py").write_text(SCORING)
    (folder / "skillweave_km.yaml").write_text(TASK)
    (work / "rules.yaml").write_text("rules:\n  - name: not_truncated\n  - name: km_even_word_count\n")
    (work / "conf" / "domain").mkdir(parents=True)
    for name, seed in (("km1", 0), ("km2", 1)):
        (work / "conf" / "domain" / f"{name}.yaml").write_text(
            f"name: {name}\nprompt_source: {{name: km_short_prompts}}\nsampling: {{seed: {seed}}}\n"
            f"rules: {work / 'rules.yaml'}\neval_task: skillweave_km\n"
        )
    return ["recipe=tiny", "model=hf_dir", f"model.path={work / 'model'}", f"hydra.searchpath=[file://{work / 'conf'}]",
            f"domain_dirs=[{folder}]", "domain=km1", "domains=[km1,km2]", "eval.configurations=[base,dpo,merged,skillweave]",
            "eval.limit=null", "threads=1", "dpo.save_steps=1", "dpo.max_steps=4"]


def skillweave(root: Path, overrides: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "skillweave", *overrides, f"artifacts_root={root}",
                             f"hydra.run.dir={root.parent / 'hydra'}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def digests(root: Path) -> dict[str, dict[str, str]]:
    """{artifact directory: {file: sha256}} of every complete artifact; config.json is left out (it records
    the command, whose artifacts_root differs between the copies)."""
    out = {}
    for manifest in sorted(root.glob("*/*/manifest.json")):
        files = json.loads(manifest.read_text())["files"]
        out[f"{manifest.parent.parent.name}/{manifest.parent.name}"] = {
            f: r["sha256"] for f, r in files.items() if f != "config.json"}
    return out


def seconds(root: Path, stage: str) -> float:
    return max(json.loads(m.read_text())["seconds"] for m in root.glob(f"{stage}/*/manifest.json"))


def delta_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def kill_run(reference: Path, stage: str, fraction: float, overrides: list[str], work: Path) -> dict:
    root = work / f"{stage}-{fraction}" / "artifacts"
    shutil.copytree(reference, root)
    for s in DOWNSTREAM[stage]:
        shutil.rmtree(root / s, ignore_errors=True)
    shutil.rmtree(root / "eval_rows", ignore_errors=True)
    delay = fraction * seconds(reference, stage)
    proc = skillweave(root, overrides)
    appeared = None
    while proc.poll() is None:
        if appeared is None and any((root / stage).glob("*/config.json")):
            appeared = time.time()
        if appeared is not None and time.time() - appeared >= delay:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    killed_in_stage = appeared is not None and not all(
        (p / "manifest.json").is_file() for p in (root / stage).iterdir() if p.is_dir()
    )
    rerun = skillweave(root, overrides)
    _, err = rerun.communicate()
    ref, got = digests(reference), digests(root)
    same = sorted(k for k in ref if got.get(k) == ref[k])
    differ = sorted(k for k in ref if k in got and got[k] != ref[k])
    files = sorted(f"{k}/{f}" for k in differ for f in ref[k] if got[k].get(f) != ref[k][f])
    row = {"stage": stage, "kill_after_s": round(delay, 2), "killed_in_stage": killed_in_stage,
           "rerun_rc": rerun.returncode, "identical": len(same), "artifacts": len(ref),
           "differing": differ, "differing_files": files, "missing": sorted(set(ref) - set(got))}
    if rerun.returncode:
        row["error"] = err.strip().splitlines()[-1:] if err else []
    deltas = [k for k in differ if k.startswith(("dpo/", "merge/", "zip/"))]
    if any(k.startswith("dpo/") for k in deltas):
        row["dpo_delta_max_abs_difference"] = max(
            delta_difference(reference / k / "delta.safetensors", root / k / "delta.safetensors")
            for k in deltas if k.startswith("dpo/"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="kill_matrix.json")
    parser.add_argument("--points", default="0.3,0.7", help="kill points, as fractions of a stage's duration")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="skillweave-kill-matrix-"))
    overrides = setup(work)
    reference = work / "reference" / "artifacts"
    ref = skillweave(reference, overrides)
    _, err = ref.communicate()
    if ref.returncode:
        sys.exit(f"the uninterrupted run failed: {err.strip().splitlines()[-1:]}")
    rows = [kill_run(reference, s, float(f), overrides, work) for s in STAGES for f in args.points.split(",")]
    print("| stage | killed after | in the stage | rerun rc | identical artifacts | differing | DPO delta max diff |")
    print("|---|---:|---|---:|---:|---|---:|")
    for r in rows:
        diff = r.get("dpo_delta_max_abs_difference")
        print(f"| {r['stage']} | {r['kill_after_s']} s | {'yes' if r['killed_in_stage'] else 'no'} | {r['rerun_rc']} | "
              f"{r['identical']}/{r['artifacts']} | {', '.join(r['differing_files']) or '-'} | {'' if diff is None else f'{diff:.1e}'} |")
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    if any(r["rerun_rc"] or r["missing"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
