"""Skills as data (S2L, METHOD.md section 3): a skill is a folder with a SKILL.md, a task generator and checks.

SKILL.md is the standard agent-skill format: YAML front matter (`name`, `description`) between `---`
lines, then the procedure. The generator makes task inputs as prompt-source rows (`{"id", "prompt",
"meta"}`, meta holding what the checks read); the checks are registered rules (skillweave.rules) that
decide whether an output follows the skill. Every skill has a training split and a held-out eval split
that never share a task, and two lm-eval tasks score the eval split: without the skill text in the
prompt (what a skill LoRA is measured on) and with it (the in-context baseline).

Built-in skills live in skillweave/skills/<name>/ (a plugin package); a folder anywhere else is loaded
by `load_skill_dir`, as `app.load_domain_dir` loads a domain folder.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from skillweave import prompts, rules
from skillweave.core.errors import ConfigError, DataError, SkillweaveError
from skillweave.core.registry import Registry
from skillweave.eval_tasks import EvalTask, as_dataset, register_eval_task
from skillweave.prompts import SourceExhausted, check_n, row
from skillweave.resources import import_folder
from skillweave.rules import RULES, RuleSet

SPLITS = ("train", "eval")
EVAL_SEED = 20_250_601
EVAL_POOL = 200
"""The lm-eval tasks score the first n <= EVAL_POOL rows of `tasks(EVAL_POOL, EVAL_SEED, "eval")`."""
HELD_OUT_SHARE = 0.2
"""The share of a generated skill's task space that `is_held_out` puts in the eval split."""
MAX_DRAWS_PER_TASK = 50
"""A generator that needs more draws than this per distinct task has run out of tasks (SourceExhausted)."""
_NAME = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
_LIBRARY_FILES = (
    Path(__file__),
    Path(rules.__file__),
    Path(rules.__file__).with_name("common.py"),
    Path(prompts.__file__),
)
"""The library code every skill's eval rows depend on: this module, the rule machinery, row ids."""

TaskGenerator = Callable[[int, int, str], list[dict]]
"""(n, seed, split) -> n rows {"id", "prompt", "meta"}; seeded, prefix-stable, train and eval disjoint."""
Draw = Callable[[random.Random, str], tuple[str, dict]]
"""(rng, split) -> (prompt, meta) of one task of that split; meta["key"] names its held-out unit."""
Check = str | tuple[str, Mapping[str, Any]]
"""A registered rule's name, or (name, its keyword arguments)."""


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    procedure: str
    """SKILL.md's body: the steps an agent follows."""
    text: str
    """The whole SKILL.md, front matter included: what an in-context prompt shows."""
    folder: Path
    tasks: TaskGenerator
    check_spec: tuple[Check, ...]
    """The checks as registered: rule names, or (name, keyword arguments). Bound when first used (`rules`),
    so a composed skill may name the rules of skills loaded after it; `check_skills` binds them all at start-up."""
    reference: Callable[[dict], str]
    """task -> a correct output, made from its meta: proves the checks accept one, and is what a
    teacher's answers can be compared with."""

    @property
    def checks(self) -> tuple[str, ...]:
        return tuple(c if isinstance(c, str) else c[0] for c in self.check_spec)

    @property
    def rules(self) -> RuleSet:
        """The checks bound to their keyword arguments: an output follows the skill when every one passes.

        Raises:
            ConfigError: an unknown rule or a keyword argument it does not take.
        """
        if self.name not in _RULE_SETS:
            _RULE_SETS[self.name] = _rule_set(self.name, self.folder, self.check_spec)
        return _RULE_SETS[self.name]

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file of the folder: what decides its tasks, checks and prompts (for digests)."""
        return tuple(sorted(p for p in self.folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts))

    def check(self, task: dict, response: str) -> dict:
        """RuleSet.score of `response` to `task`: {"passed", "score", "rules": {name: {passed, score, reason}}}."""
        return self.rules.score({"prompt": task["prompt"], "response": response, "meta": task["meta"]})


SKILLS: Registry[Skill] = Registry("skill")
_RULE_SETS: dict[str, RuleSet] = {}


def check_skills() -> None:
    """Bind every registered skill's checks (called once all skills are loaded): an unknown rule or keyword
    argument fails at start-up, in one line naming the skill's folder."""
    for name in SKILLS.names():
        SKILLS.get(name).rules


def parse_skill_md(path: str | Path) -> tuple[dict, str]:
    """SKILL.md's front matter (a mapping with `name` and `description`) and its body.

    Raises:
        ConfigError: no front matter, unclosed, invalid YAML, not a mapping, a missing or malformed name or
            description; one line naming the file and the fix.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot read the skill file ({e.strerror}): a skill folder holds a SKILL.md"
        ) from None
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").split("\n")
    if lines[0].strip() != "---":
        raise ConfigError(
            f"{path}: no YAML front matter: start the file with a '---' line, name: and description:, then '---'"
        )
    end = next((i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---"), None)
    if end is None:
        raise ConfigError(f"{path}: the front matter is not closed: end it with a '---' line")
    try:
        front = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML in the front matter: {' '.join(str(e).split())}") from None
    if not isinstance(front, dict):
        raise ConfigError(f"{path}: the front matter must be a mapping with name: and description:")
    for key in ("name", "description"):
        if not isinstance(front.get(key), str) or not front[key].strip():
            raise ConfigError(f"{path}: the front matter has no {key}: add '{key}: ...' between the '---' lines")
    if len(front["name"]) > 64 or not _NAME.fullmatch(front["name"]):
        raise ConfigError(
            f"{path}: name {front['name']!r} must be lowercase letters and digits joined by - or _, at most 64"
        )
    if len(front["description"]) > 1024:
        raise ConfigError(f"{path}: the description has {len(front['description'])} characters; shorten it to 1024")
    return front, "\n".join(lines[end + 1 :]).strip("\n")


def register_skill(
    folder: str | Path, tasks: TaskGenerator, checks: Sequence[Check], reference: Callable[[dict], str]
) -> Skill:
    """Read `folder`/SKILL.md and register the skill under its name, which must be the folder's name
    (the Agent Skills convention; eval task names derive from it).

    Raises:
        ConfigError: a bad SKILL.md (parse_skill_md), a name other than the folder's, no procedure, no
            checks, an unknown check or keyword argument.
    """
    folder = Path(folder).resolve()
    front, body = parse_skill_md(folder / "SKILL.md")
    name = front["name"]
    if name != folder.name:
        raise ConfigError(f"{folder / 'SKILL.md'}: name {name!r} differs from its folder {folder.name!r}: rename one")
    if not body.strip():
        raise ConfigError(
            f"{folder / 'SKILL.md'}: no procedure after the front matter: write the steps an agent follows"
        )
    if not checks:
        raise ConfigError(
            f"{folder}: skill {name!r} has no checks: register the rules that decide whether an output follows it"
        )
    names = [c if isinstance(c, str) else c[0] for c in checks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{folder}: skill {name!r} lists a check twice: list each rule once")
    skill = Skill(
        name, front["description"].strip(), body, (folder / "SKILL.md").read_text(encoding="utf-8"), folder, tasks,
        tuple(checks), reference,
    )
    return SKILLS.register(name)(skill)


def _rule_set(name: str, folder: Path, checks: Sequence[Check]) -> RuleSet:
    bound = []
    for check in checks:
        rule, kwargs = (check, {}) if isinstance(check, str) else (check[0], dict(check[1]))
        try:
            bound.append((rule, RULES.get(rule)(**kwargs)))
        except (SkillweaveError, TypeError) as e:  # an unknown rule, a keyword argument it does not take
            raise ConfigError(f"{folder}: skill {name!r}: {e}") from None
    return RuleSet(f"skill:{name}", tuple(bound))


def load_skill_dir(path: str | Path) -> Skill:
    """Import a skill folder outside the package as `skillweave_skill_<name>`; its __init__.py registers it.

    Raises:
        ConfigError: not a folder with an __init__.py and a SKILL.md, or one that registers no skill of its name.
    """
    folder = Path(path).expanduser().resolve()
    if not (folder / "__init__.py").is_file() or not (folder / "SKILL.md").is_file():
        raise ConfigError(
            f"skill_dirs: {path} is not a skill folder (a folder with a SKILL.md and an __init__.py that registers it)"
        )
    if folder.name in SKILLS and SKILLS.get(folder.name).folder != folder:
        raise ConfigError(
            f"skill_dirs: {folder}: a skill {folder.name!r} is already loaded from {SKILLS.get(folder.name).folder}: "
            "rename the folder and its SKILL.md name"
        )
    module_name = f"skillweave_skill_{folder.name}"
    import_folder(folder, module_name)
    if folder.name not in SKILLS:
        raise ConfigError(
            f"skill_dirs: {folder}/__init__.py registers no skill {folder.name!r}: call skillweave.skill.register_skill"
        )
    skill = SKILLS.get(folder.name)
    try:
        skill.rules  # its checks name rules registered by now (the package's skills and this folder's)
    except ConfigError:
        SKILLS.unregister(folder.name)
        sys.modules.pop(module_name, None)
        raise
    return skill


# -------------------------------------------------------------------------------- task generators


def is_held_out(key: str, share: float = HELD_OUT_SHARE) -> bool:
    """Whether the task unit `key` (a date, a quantity, an object's values) belongs to the eval split: a hash
    partition, so the split is fixed by the key alone and no seed can draw an eval unit for training."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def generated_tasks(name: str, draw: Draw) -> TaskGenerator:
    """A TaskGenerator from `draw`, which returns one task of the split it is asked for (the skill makes the
    splits disjoint by construction, e.g. with is_held_out); repeated prompts are skipped. Draws are
    sequential from a seeded RNG, so the first n rows of a seed are the first n of any longer draw."""

    def tasks(n: int, seed: int, split: str) -> list[dict]:
        source = f"skill {name} ({split})"
        check_n(n, source)
        _check_split(split)
        rng = random.Random(f"{name}/{split}/{seed}")
        rows, seen = [], set()
        for _ in range(MAX_DRAWS_PER_TASK * n):
            prompt, meta = draw(rng, split)
            if prompt not in seen:
                seen.add(prompt)
                rows.append(row(prompt, meta))
                if len(rows) == n:
                    return rows
        raise SourceExhausted(source, len(rows), n)

    return tasks


def seed_file_tasks(path: str | Path) -> TaskGenerator:
    """A TaskGenerator over a JSONL seed file of hand-written tasks, one `{"prompt", "meta", "split"}` per line,
    split "train" or "eval" (the stored split). Train rows come in a seeded shuffle, eval rows in file order.

    Raises:
        DataError: an unreadable line, a row without prompt/meta/split, or a prompt in both splits.
    """
    path = Path(path)
    by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not JSON ({e.msg}): one task object per line") from None
        if not isinstance(item, dict) or set(item) != {"prompt", "meta", "split"} or item["split"] not in SPLITS:
            raise DataError(f'{path}:{number}: a task is {{"prompt", "meta", "split": "train" or "eval"}}')
        by_split[item["split"]].append(row(item["prompt"], item["meta"]))
    shared = {r["prompt"] for r in by_split["train"]} & {r["prompt"] for r in by_split["eval"]}
    if shared:
        raise DataError(f"{path}: {len(shared)} prompts are in both splits, e.g. {min(shared)!r}: keep each in one")

    def tasks(n: int, seed: int, split: str) -> list[dict]:
        source = f"{path.name} ({split})"
        check_n(n, source)
        _check_split(split)
        rows = list(by_split[split])
        if split == "train":
            random.Random(seed).shuffle(rows)
        return prompts.take(rows, n, source)

    return tasks


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: a skill's tasks have the splits {', '.join(SPLITS)}")


# ----------------------------------------------------------------------------------- prompts and eval


def skill_prompt(skill: Skill, task: dict, with_skill_text: bool) -> str:
    """The user message for `task`: its input alone (what S2L trains on, and what a skill LoRA is evaluated
    on), or preceded by the whole SKILL.md (how the teacher answers, and the in-context baseline)."""
    if not with_skill_text:
        return task["prompt"]
    return f"Follow this skill.\n\n<skill>\n{skill.text.strip()}\n</skill>\n\n{task['prompt']}"


def eval_task_name(skill: str, with_skill_text: bool) -> str:
    return f"skillweave_skill_{skill}" + ("_in_context" if with_skill_text else "")


def register_skill_eval_tasks(skill: Skill) -> None:
    """Register the skill's two lm-eval tasks, whose YAMLs sit in its folder: `skillweave_skill_<name>.yaml`
    (metric_list: pass, then one metric per check) and `skillweave_skill_<name>_in_context.yaml` (which
    includes it). Their prompts are the eval tasks' inputs: the SKILL.md beside them in the in-context
    task is given context, not an eval item, so the contamination check leaves it out.

    Raises:
        ConfigError: a YAML is missing, or the metrics listed are not pass and the checks.
    """
    base = skill.folder / f"{eval_task_name(skill.name, False)}.yaml"
    for with_text in (False, True):
        path = skill.folder / f"{eval_task_name(skill.name, with_text)}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"{path}: missing; a skill's eval tasks are lm-eval YAMLs in its folder (as in skills/iso_dates)"
            )
    spec = yaml.load(base.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
    metrics = [m.get("metric") for m in spec.get("metric_list", [])]
    if metrics != ["pass", *skill.checks]:
        raise ConfigError(f"{base}: metric_list is {metrics}; list pass, then the checks {', '.join(skill.checks)}")
    n = int((spec.get("metadata") or {}).get("n", EVAL_POOL))  # the docs the task scores (a small eval split says fewer)

    def texts() -> list[str]:
        return [task["prompt"] for task in skill.tasks(n, EVAL_SEED, "eval")]

    for with_text in (False, True):
        name = eval_task_name(skill.name, with_text)
        register_eval_task(
            EvalTask(
                name,
                skill.folder / f"{name}.yaml",
                "pass",
                texts,
                also_kept=skill.checks,
                digest_files=(*skill.files, *_LIBRARY_FILES),
            )
        )


def load_eval_docs(skill: str, n: int = EVAL_POOL, with_skill_text: bool = False, **_metadata: Any):
    """The `custom_dataset` of a skill's eval tasks: the first `n` held-out tasks (YAML metadata, or
    `--metadata '{"n": 50}'`) with the user message, the meta (as JSON: its shape differs between tasks)
    and the reference output. The id is the task's, the same with and without the skill text."""
    n = int(n)
    if not 0 < n <= EVAL_POOL:
        raise ConfigError(f"{eval_task_name(skill, bool(with_skill_text))}: n must be in 1..{EVAL_POOL}, got {n}")
    found = SKILLS.get(skill)
    return as_dataset(
        [
            {
                "id": task["id"],
                "prompt": skill_prompt(found, task, bool(with_skill_text)),
                "meta": json.dumps(task["meta"]),
                "reference": found.reference(task),
            }
            for task in found.tasks(n, EVAL_SEED, "eval")
        ]
    )


def score_eval_doc(skill: str, doc: dict, results: list[str]) -> dict[str, float]:
    """The `process_results` of a skill's eval tasks: pass = every check passes, and each check's verdict."""
    verdict = SKILLS.get(skill).check({"prompt": doc["prompt"], "meta": json.loads(doc["meta"])}, results[0])
    return {"pass": float(verdict["passed"]), **{name: float(r["passed"]) for name, r in verdict["rules"].items()}}
