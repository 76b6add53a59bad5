"""What changed between the base and dpo rows of a code eval, task by task.

    python experiments/code_gain/compare.py artifacts/eval/all-<key> [artifacts/filter/code-<key>]

Prints the tasks won and lost per function with an exact McNemar test on them, the mean answer length, how many answers go on after
their code block, the share of asserts passed, and the paired difference (points ± standard error)
over all tasks and, given the filter artifact the policy was trained on, split by whether the eval
task's function was among the prompts that gave pairs.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def read(path: Path) -> dict[int, dict]:
    return {r["doc_id"]: r for r in map(json.loads, path.open())}


def paired(base: dict, dpo: dict, ids: list[int]) -> str:
    from skillweave.evaluation import paired_difference

    before, after = [base[i]["score"] for i in ids], [dpo[i]["score"] for i in ids]
    mean, se = paired_difference(before, after)
    return (f"n={len(ids)}: base {100 * sum(before) / len(ids):.1f}, dpo {100 * sum(after) / len(ids):.1f}, "
            f"paired {100 * mean:+.1f} ± {100 * se:.1f}")


def trained_functions(filter_dir: Path) -> set[str]:
    from datasets import load_from_disk

    entry = {r["prompt_id"]: r["meta"]["entry_point"] for r in map(json.loads, (filter_dir / "scored.jsonl").open())}
    return {entry[p] for p in load_from_disk(str(filter_dir / "pairs"))["prompt_id"]}


def main(eval_dir: Path, filter_dir: Path | None = None) -> None:
    from skillweave.domains.code.source import code_eval_set

    (task,) = {p.name.split("-", 1)[1] for p in (eval_dir / "samples").glob("*.jsonl")}
    base, dpo = read(eval_dir / "samples" / f"base-{task}"), read(eval_dir / "samples" / f"dpo-{task}")
    ids = sorted(set(base) & set(dpo))
    docs = code_eval_set()
    docs = docs if len(ids) == len(docs) else None  # skillweave_codetasks
    name = (lambda i: docs[i]["meta"]["entry_point"]) if docs else (lambda i: base[i]["id"])
    won = Counter(name(i) for i in ids if dpo[i]["score"] > base[i]["score"])
    lost = Counter(name(i) for i in ids if dpo[i]["score"] < base[i]["score"])
    print(f"won {sum(won.values())}: {dict(won.most_common())}")
    print(f"lost {sum(lost.values())}: {dict(lost.most_common())}")
    n_won, n_lost = sum(won.values()), sum(lost.values())
    if n_won + n_lost:  # exact McNemar: the discordant tasks as a two-sided binomial test at 1/2
        from scipy.stats import binomtest

        print(f"exact McNemar on {n_won} won / {n_lost} lost: p = {binomtest(n_won, n_won + n_lost).pvalue:.3f}")
    for label, rows in (("base", base), ("dpo", dpo)):
        answers = [rows[i]["response"] for i in ids]
        after = sum("```" in t and bool(t.rsplit("```", 1)[1].strip()) for t in answers)
        asserts = [rows[i]["also"]["tests_passed"] for i in ids if "tests_passed" in rows[i].get("also", {})]
        share = f", asserts passed {sum(asserts) / len(asserts):.3f}" if asserts else ""
        print(f"{label}: mean answer {sum(map(len, answers)) / len(answers):.0f} characters, "
              f"text after the code block {after}{share}")
    print("all tasks", paired(base, dpo, ids))
    if filter_dir is not None and docs:
        trained = trained_functions(filter_dir)
        for label, keep in (("function trained", True), ("function not trained", False)):
            print(label, paired(base, dpo, [i for i in ids if (name(i) in trained) == keep]))


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:3]))
