"""Skills as data (skillweave.skill, skillweave/skills/): SKILL.md parsing, the shipped skills' generators,
splits and checks, a skill folder loaded from elsewhere, and the held-out splits scored through lm-eval."""

from __future__ import annotations

import json
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest

from skillweave.core.errors import ConfigError, DataError
from skillweave.eval_tasks import EVAL_TASKS, include_paths
from skillweave.skill import (
    EVAL_POOL,
    EVAL_SEED,
    SKILLS,
    Skill,
    eval_task_name,
    load_skill_dir,
    parse_skill_md,
    register_skill,
    register_skill_eval_tasks,
    seed_file_tasks,
    skill_prompt,
)

SHIPPED = ("conventional_commits", "dated_commits", "iso_dates", "json_schema", "si_units")
EVAL_TASK_NAMES = [eval_task_name(name, with_text) for name in SHIPPED for with_text in (False, True)]


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------ SKILL.md

VALID = "---\nname: greet\ndescription: Say hello politely.\n---\n\n# Greet\n\n1. Say hello.\n"


@pytest.mark.parametrize(
    "text, error",
    [
        (VALID, None),  # the standard format: front matter between '---' lines, then the procedure
        ("\ufeff" + VALID.replace("\n", "\r\n"), None),  # a BOM and Windows line ends read the same
        ("# Greet\n\n1. Say hello.\n", "no YAML front matter: start the file with a '---' line"),
        ("---\nname: greet\ndescription: Say hello.\n# Greet\n", "the front matter is not closed"),
        ("---\ndescription: Say hello.\n---\nbody\n", "the front matter has no name: add 'name: ...'"),
        ("---\nname: greet\n---\nbody\n", "the front matter has no description"),
        ("---\nname: [greet\ndescription: x\n---\nbody\n", "invalid YAML in the front matter"),
        ("---\n- greet\n---\nbody\n", "must be a mapping with name: and description:"),
        ("---\nname: Greet Me\ndescription: x\n---\nbody\n", "must be lowercase letters and digits"),
        ("---\nname: greet\ndescription: " + "x" * 1025 + "\n---\nbody\n", "shorten it to 1024"),
    ],
)
def test_parse_skill_md(tmp_path, text, error):
    path = tmp_path / "SKILL.md"
    path.write_text(text, encoding="utf-8")
    if error is None:
        front, body = parse_skill_md(path)
        assert front == {"name": "greet", "description": "Say hello politely."}
        assert body == "# Greet\n\n1. Say hello."
        return
    with pytest.raises(ConfigError) as excinfo:
        parse_skill_md(path)
    message = one_line_error(excinfo)
    assert message.startswith(str(path)) and error in message


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_skill_md_is_standard_and_named_after_its_folder(name):
    skill = SKILLS.get(name)
    front, body = parse_skill_md(skill.folder / "SKILL.md")
    assert front["name"] == skill.folder.name == name and len(front["description"]) > 40
    assert skill.procedure == body and "## Steps" in body and "Example" in body
    assert skill.text == (skill.folder / "SKILL.md").read_text(encoding="utf-8")
    assert {skill.folder / "SKILL.md", skill.folder / "checks.py", skill.folder / "generator.py"} <= set(skill.files)


# --------------------------------------------------------------------------- generators and splits


@pytest.mark.parametrize("name", SHIPPED)
def test_generator_is_seeded_and_prefix_stable(name):
    tasks = SKILLS.get(name).tasks
    long = tasks(120, 7, "train")
    assert tasks(120, 7, "train") == long  # the same seed, the same rows
    assert tasks(20, 7, "train") == long[:20]  # the first n rows are the first n of any longer draw
    assert tasks(20, 8, "train") != long[:20]  # another seed, other rows
    assert len({t["id"] for t in long}) == 120 and all(set(t) == {"id", "prompt", "meta"} for t in long)
    assert all(t["meta"]["key"] for t in long)


@pytest.mark.parametrize("name", SHIPPED)
def test_train_and_eval_never_share_a_task(name):
    tasks = SKILLS.get(name).tasks
    evals = tasks(EVAL_POOL, EVAL_SEED, "eval")
    assert len({t["prompt"] for t in evals}) == EVAL_POOL >= 100
    train = tasks(1500, 0, "train") + tasks(1500, 1, "train")
    # disjoint on the held-out unit (a date, a change, an object, a quantity), not only on the wording
    assert not {t["meta"]["key"] for t in train} & {t["meta"]["key"] for t in evals}
    assert not {t["prompt"] for t in train} & {t["prompt"] for t in evals}
    assert not {t["meta"]["key"] for t in train} & {t["meta"]["key"] for t in tasks(EVAL_POOL, 3, "eval")}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_reference_answer_passes_every_check(name):
    skill = SKILLS.get(name)
    for task in skill.tasks(EVAL_POOL, EVAL_SEED, "eval") + skill.tasks(500, 0, "train"):
        verdict = skill.check(task, skill.reference(task))
        assert verdict["passed"], (task["prompt"], skill.reference(task), verdict["rules"])


def test_a_split_that_does_not_exist_is_one_clear_error():
    with pytest.raises(ConfigError, match="split='test': a skill's tasks have the splits train, eval"):
        SKILLS.get("iso_dates").tasks(5, 0, "test")


def test_skill_prompt_with_and_without_the_skill_text():
    skill = SKILLS.get("si_units")
    (task,) = skill.tasks(1, 0, "train")
    assert skill_prompt(skill, task, with_skill_text=False) == task["prompt"]  # what S2L trains on
    shown = skill_prompt(skill, task, with_skill_text=True)
    assert skill.text.strip() in shown and shown.endswith("\n\n" + task["prompt"])


# -------------------------------------------------------------------------------------- checks


def failed(name: str, meta: dict, response: str) -> set[str]:
    verdict = SKILLS.get(name).check({"prompt": "", "meta": meta}, response)
    assert all(r["reason"] for r in verdict["rules"].values())
    assert set(verdict["rules"]) == set(SKILLS.get(name).checks)
    return {rule for rule, r in verdict["rules"].items() if not r["passed"]}


DATETIME = {"key": "2021-03-04", "iso": "2021-03-04T16:05+02:00"}  # 4 March 2021, 4:05 pm, UTC+2
DATE_ONLY = {"key": "1999-12-31", "iso": "1999-12-31"}
UTC_SECONDS = {"key": "2021-03-04", "iso": "2021-03-04T09:30:15Z"}


@pytest.mark.parametrize(
    "meta, response, expected",
    [
        (DATETIME, "2021-03-04T16:05+02:00", set()),  # correct
        (DATETIME, "  2021-03-04T16:05:00+02:00\n", set()),  # zero seconds written out, whitespace around
        (DATETIME, "The date is 2021-03-04T16:05+02:00.", {"iso_only"}),  # the right value inside a sentence
        (DATETIME, "2021-03-04T04:05+02:00", {"iso_value"}),  # 4 pm read as 04
        (DATETIME, "2021-04-03T16:05+02:00", {"iso_value"}),  # day and month swapped
        (DATETIME, "2021-03-04T14:05Z", {"iso_value"}),  # converted to UTC instead of keeping the local time
        (DATETIME, "2021-03-04T16:05", {"iso_value"}),  # the offset dropped
        (DATETIME, "2021-03-04", {"iso_value"}),  # the time dropped
        (DATETIME, "2021-03-04T16:05+0200", {"iso_only", "iso_value"}),  # basic-format offset
        (DATETIME, "2021-13-04T16:05+02:00", {"iso_only", "iso_value"}),  # month 13
        (DATETIME, "03/04/2021 16:05", {"iso_only", "iso_value"}),  # not ISO 8601
        (DATE_ONLY, "1999-12-31", set()),  # a date alone for a date alone
        (DATE_ONLY, "1999-12-31T00:00", {"iso_value"}),  # an invented midnight
        (DATE_ONLY, "99-12-31", {"iso_only", "iso_value"}),  # a two-digit year
        (UTC_SECONDS, "2021-03-04T09:30:15Z", set()),  # UTC as Z
        (UTC_SECONDS, "2021-03-04T09:30:15+00:00", set()),  # +00:00 is the same offset as Z
        (UTC_SECONDS, "2021-03-04T09:30Z", {"iso_value"}),  # the seconds lost
        (UTC_SECONDS, "2021-03-04T09:30:15", {"iso_value"}),  # UTC dropped
    ],
)
def test_iso_dates_checks(meta, response, expected):
    assert failed("iso_dates", meta, response) == expected


def commit(kind: str, scope: str, change: str, breaking: str | None = None) -> dict:
    return {"key": "test", "commit": {"type": kind, "scope": scope, "change": change, "breaking": breaking}}


FIX = commit("fix", "parser", "crashed when the input was empty")
BREAKING = commit("feat", "api", "can now export results as CSV", breaking="the v1 endpoints are removed")
EVERY_COMMIT_CHECK = {"commit_header", "commit_type", "commit_scope", "commit_subject", "commit_topic",
                      "commit_breaking"}


@pytest.mark.parametrize(
    "meta, response, expected",
    [
        (FIX, "fix(parser): handle empty input", set()),  # correct
        (FIX, "fix(parser): handle empty input\n\nThe parser crashed on empty input.\n", set()),  # with a body
        (FIX, "fix(parser): stop crashing on empty files", set()),  # other words for the same change
        (FIX, "fix(parser): fix a bug", {"commit_topic"}),  # says nothing about the change
        (FIX, "fix(parser): embed the input grammar", set()),  # an imperative verb ending in -ed
        (FIX, "feat(parser): handle empty input", {"commit_type"}),  # a bug fix typed as a feature
        (FIX, "bugfix(parser): handle empty input", {"commit_type"}),  # not a Conventional Commits type
        (FIX, "Fix(parser): handle empty input", {"commit_type"}),  # the type is lowercase
        (FIX, "fix(lexer): handle empty input", {"commit_scope"}),  # another module
        (FIX, "fix: handle empty input", {"commit_scope"}),  # no scope
        (FIX, "fix(parser): Handle empty input", {"commit_subject"}),  # a capital
        (FIX, "fix(parser): handle empty input.", {"commit_subject"}),  # a full stop
        (FIX, "fix(parser): handled empty input", {"commit_subject"}),  # past tense
        (FIX, "fix(parser): handles empty input", {"commit_subject"}),  # third person
        (FIX, "fix(parser): handling empty input", {"commit_subject"}),  # a gerund
        # a first line over 72 characters
        (FIX, "fix(parser): handle empty input lines, blank lines and lines of whitespace only", {"commit_header"}),
        (FIX, "fix(parser): handle empty input\nThe parser crashed.", {"commit_header"}),  # no blank line before a body
        (FIX, "fix(parser):handle empty input", EVERY_COMMIT_CHECK),  # no space after the colon
        (FIX, "Here is the message:\n\nfix(parser): handle empty input", EVERY_COMMIT_CHECK),  # a preamble
        (FIX, "```\nfix(parser): handle empty input\n```", EVERY_COMMIT_CHECK),  # a code fence
        (FIX, "fix(parser)!: handle empty input", {"commit_breaking"}),  # marked breaking; nothing breaks
        (FIX, "fix(parser): handle empty input\n\nBREAKING CHANGE: none", {"commit_breaking"}),  # a footer, likewise
        (BREAKING, "feat(api)!: add csv export\n\nBREAKING CHANGE: the v1 endpoints are removed.", set()),  # correct
        (BREAKING, "feat(api)!: add csv export\n\nExport as CSV.\n\nBREAKING-CHANGE: v1 is removed", set()),  # body
        (BREAKING, "feat(api)!: add csv export\n\nRefs: #12\nBREAKING CHANGE: v1 is removed", set()),  # other trailers
        (BREAKING, "feat(api)!: add csv export\n\nBREAKING CHANGE: v1 gone\n\nThanks", {"commit_breaking"}),  # not last
        (BREAKING, "feat(api): add csv export\n\nBREAKING CHANGE: v1 is removed.", {"commit_breaking"}),  # no '!'
        (BREAKING, "feat(api)!: add csv export", {"commit_breaking"}),  # no footer
        (BREAKING, "feat(api)!: add csv export\n\nbreaking change: v1 is removed.", {"commit_breaking"}),  # lowercase
        # the footer straight under the first line: no body separation, no footer paragraph
        (BREAKING, "feat(api)!: add csv export\nBREAKING CHANGE: v1 is removed.", {"commit_header", "commit_breaking"}),
    ],
)
def test_conventional_commits_checks(meta, response, expected):
    assert failed("conventional_commits", meta, response) == expected


DATED = {**BREAKING, "iso": "2021-03-04T16:05+02:00"}  # released 4 March 2021, 4:05 pm, UTC+2
DATED_MESSAGE = "feat(api)!: add csv export\n\nReleased: 2021-03-04T16:05+02:00\n\nBREAKING CHANGE: v1 is removed."


@pytest.mark.parametrize(
    "response, expected",
    [
        (DATED_MESSAGE, set()),  # correct
        (DATED_MESSAGE.replace("16:05+02:00", "16:05:00+02:00"), set()),  # zero seconds written out
        (DATED_MESSAGE.replace("Released: ", "Released:  "), {"dated_commits_release_line"}),  # two spaces
        (DATED_MESSAGE.replace("Released", "released"), {"dated_commits_release_line"}),  # lowercase
        (DATED_MESSAGE.replace("Released", "Release date"), {"dated_commits_release_line"}),  # another label
        (DATED_MESSAGE.replace("+02:00", "+02:00 (local time)"), {"dated_commits_release_line"}),  # text after it
        (DATED_MESSAGE.replace("Released: 2021-03-04T16:05+02:00", "Released: 2021-03-04T16:05+02:00\n"
                               "Released: 2021-03-04T14:05Z"), {"dated_commits_release_line"}),  # two lines
        (DATED_MESSAGE.replace("Released: ", "Released on "), {"dated_commits_release_line"}),  # not the label
    ],
)
def test_dated_commits_release_line(response, expected):
    assert failed("dated_commits", DATED, response) == expected


@pytest.mark.parametrize(
    "response, expected",
    [
        # a correct commit, the date not rewritten (iso_dates not followed)
        (DATED_MESSAGE.replace("2021-03-04T16:05+02:00", "March 4th, 2021 at 4:05 pm UTC+2"),
         {"iso_value", "dated_commits_release_line"}),
        (DATED_MESSAGE.replace("T16:05", "T04:05"), {"iso_value"}),  # 4 pm read as 04
        (DATED_MESSAGE.replace("2021-03-04T16:05+02:00", "2021-03-04"), {"iso_value"}),  # the time dropped
        (DATED_MESSAGE.split("\n\nReleased")[0] + "\n\nBREAKING CHANGE: v1 is removed.",
         {"iso_value", "dated_commits_release_line"}),  # no release line: conventional_commits alone
        # a correct date, the commit wrong (conventional_commits not followed)
        (DATED_MESSAGE.replace("feat(api)!: add csv export", "Added CSV export"),
         EVERY_COMMIT_CHECK),  # no Conventional Commits header
        (DATED_MESSAGE.replace("feat(api)!", "fix(api)!"), {"commit_type"}),  # the wrong type
        (DATED_MESSAGE.split("\n\nBREAKING")[0], {"commit_breaking"}),  # the footer dropped
        ("feat(api)!: add csv export\n\nBREAKING CHANGE: v1 is removed.\n\nReleased: 2021-03-04T16:05+02:00",
         {"commit_breaking"}),  # the footer not last
        ("feat(api)!: add csv export\nReleased: 2021-03-04T16:05+02:00\n\nBREAKING CHANGE: v1 is removed.",
         {"commit_header"}),  # no blank line under the header
    ],
)
def test_dated_commits_fails_when_either_skill_is_not_followed(response, expected):
    assert failed("dated_commits", DATED, response) == expected


PRODUCT = {
    "key": "product",
    "schema": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "price": {"type": "number", "minimum": 0},
            "in_stock": {"type": "boolean"},
            "category": {"type": "string", "enum": ["kitchen", "garden"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "pages": {"type": "integer", "minimum": 1},
        },
        "required": ["name", "price"],
        "additionalProperties": False,
    },
    "values": {"name": "Blue Kettle", "price": 24.5, "in_stock": False, "tags": ["steel", "gift"], "pages": 3},
}
EVERY_JSON_CHECK = {"json_only", "json_schema_valid", "json_values"}


def product(**changes) -> str:
    return json.dumps({key: value for key, value in {**PRODUCT["values"], **changes}.items() if value is not None})


@pytest.mark.parametrize(
    "response, expected",
    [
        (product(), set()),  # correct
        ('{\n  "tags": ["steel", "gift"],\n  "pages": 3.0, "price": 24.50,\n "name": "Blue Kettle", "in_stock": false}',
         set()),  # pretty-printed, another key order, 24.50 and 3.0 are the same numbers
        (f"```json\n{product()}\n```", {"json_only"}),  # a code fence
        (f"Here is the object: {product()}", {"json_only"}),  # text before it
        (product(price="24.5"), {"json_schema_valid", "json_values"}),  # a number as a string
        (product(in_stock="false"), {"json_schema_valid", "json_values"}),  # a boolean as a string
        (product(pages=3.5), {"json_schema_valid", "json_values"}),  # not an integer
        (product(name=None), {"json_schema_valid", "json_values"}),  # a required field missing
        (product(in_stock=None), {"json_values"}),  # an optional field that was asked for missing
        (product(category="kitchen"), {"json_values"}),  # an invented optional field (valid, but not asked)
        (product(category="Kitchen"), {"json_schema_valid", "json_values"}),  # not among the enum's values
        (product(color="blue"), {"json_schema_valid", "json_values"}),  # a field the schema does not allow
        (product(price=-24.5), {"json_schema_valid", "json_values"}),  # below the minimum
        (product(price=25), {"json_values"}),  # a valid but wrong value
        (product(tags=["gift", "steel"]), {"json_values"}),  # the list out of the requested order
        (product(in_stock=0), {"json_schema_valid", "json_values"}),  # 0 is not false
        (json.dumps([PRODUCT["values"]]), EVERY_JSON_CHECK),  # an array, not the object
        (product().replace('"', "'"), EVERY_JSON_CHECK),  # single quotes: not JSON
        (product()[:-1] + ",}", EVERY_JSON_CHECK),  # a trailing comma
    ],
)
def test_json_schema_checks(response, expected):
    assert failed("json_schema", PRODUCT, response) == expected


def quantity(exact: Fraction, places: int, symbol: str) -> dict:
    return {"key": "test", "quantity": {"exact": str(exact), "places": places, "symbol": symbol}}


MILES = quantity(Fraction("3.5") * Fraction("1.609344"), 2, "km")  # 3.5 miles
FAHRENHEIT = quantity((Fraction(72) - 32) * Fraction(5, 9), 1, "°C")  # 72 °F
KELVIN = quantity((Fraction(72) - 32) * Fraction(5, 9) + Fraction("273.15"), 1, "K")  # 72 °F
WHOLE = quantity(16 * Fraction("28.349523125"), 0, "g")  # 16 oz
FREEZING = quantity(Fraction(-40), 1, "°C")  # -40 °F


@pytest.mark.parametrize(
    "meta, response, expected",
    [
        (MILES, "5.63 km", set()),  # correct: 5.632704 km
        (MILES, "5.63\u00a0km", set()),  # a no-break space is a space
        (MILES, "5.64 km", {"si_value"}),  # off by more than the rounding allows
        (MILES, "5.633 km", {"si_format"}),  # close enough, but 3 decimals where 2 were asked
        (MILES, "5.63km", {"si_format"}),  # no space
        (MILES, "5.63  km", {"si_format"}),  # two spaces
        (MILES, "5.63 Km", {"si_format"}),  # the symbol's case
        (MILES, "5.63 kms", {"si_format"}),  # a plural symbol
        (MILES, "5.63 kilometres", {"si_format"}),  # a name, not the symbol
        (MILES, "5.63 km.", {"si_format"}),  # a full stop
        (MILES, "5,63 km", {"si_value", "si_format"}),  # a decimal comma
        (MILES, "3.5 miles is 5.63 km", {"si_value", "si_format"}),  # a sentence
        (MILES, "5632.70 m", {"si_value", "si_format"}),  # metres, not the kilometres asked
        (FAHRENHEIT, "22.2 °C", set()),  # correct: 22.22 °C
        (FAHRENHEIT, "22.2°C", {"si_format"}),  # °C takes a space too
        (FAHRENHEIT, "22.2 C", {"si_format"}),  # no degree sign
        (FAHRENHEIT, "22.2 \u00baC", {"si_format"}),  # the masculine ordinal is not the degree sign
        (FAHRENHEIT, "22 °C", {"si_value", "si_format"}),  # rounded to a whole number
        (KELVIN, "295.4 K", set()),  # correct: 295.372 K
        (KELVIN, "295.4 °K", {"si_format"}),  # kelvins take no degree sign
        (WHOLE, "454 g", set()),  # a whole number: 453.59 g
        (WHOLE, "454.0 g", {"si_format"}),  # a decimal where none was asked
        (WHOLE, "453 g", {"si_value"}),  # truncated, not rounded
        (FREEZING, "-40.0 °C", set()),  # a hyphen-minus
        (FREEZING, "\u221240.0 °C", set()),  # a minus sign
        (FREEZING, "40.0 °C", {"si_value"}),  # the sign lost
    ],
)
def test_si_units_checks(meta, response, expected):
    assert failed("si_units", meta, response) == expected


# ----------------------------------------------------------------------- a skill folder from elsewhere

EXTERNAL_INIT = '''
"""greeting: say hello to the person named; one seed file of hand-written tasks."""

from pathlib import Path

from skillweave.rules import RuleResult, rule
from skillweave.skill import register_skill, seed_file_tasks

HERE = Path(__file__).parent
RULE = f"{HERE.name}_names_the_person"  # rules are global: one per folder of this test


@rule(RULE)
def names_the_person(sample) -> RuleResult:
    named = sample["response"].startswith(f"Hello, {sample['meta']['person']}")
    return RuleResult(named, float(named), "greets them by name" if named else "does not greet them by name")


CHECKS = [RULE]
SKILL = register_skill(HERE, seed_file_tasks(HERE / "tasks.jsonl"), CHECKS, lambda t: f"Hello, {t['meta']['person']}!")
'''


def write_skill(folder: Path, init: str, tasks: list[dict] | None = None) -> Path:
    folder.mkdir()
    (folder / "SKILL.md").write_text(f"---\nname: {folder.name}\ndescription: Greet someone.\n---\n\n1. Say hello.\n")
    (folder / "__init__.py").write_text(textwrap.dedent(init))
    rows = tasks if tasks is not None else [
        {"prompt": f"Greet {p}.", "meta": {"person": p}, "split": s}
        for p, s in (("Ada", "train"), ("Alan", "train"), ("Grace", "train"), ("Edsger", "eval"))
    ]
    (folder / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_skill_folder_outside_the_package_loads(tmp_path):
    folder = write_skill(tmp_path / "greeting", EXTERNAL_INIT)
    skill = load_skill_dir(folder)
    assert SKILLS.get("greeting") is skill and load_skill_dir(folder) is skill  # loading twice is a no-op
    assert skill.description == "Greet someone." and skill.checks == ("greeting_names_the_person",)
    train = skill.tasks(3, 0, "train")
    assert {t["meta"]["person"] for t in train} == {"Ada", "Alan", "Grace"} and train == skill.tasks(3, 0, "train")
    assert skill.tasks(2, 0, "train") == train[:2]  # prefix-stable
    assert [t["meta"]["person"] for t in skill.tasks(1, 0, "eval")] == ["Edsger"]  # the stored split
    assert all(skill.check(t, skill.reference(t))["passed"] for t in train)
    assert not skill.check(train[0], "Hi there")["passed"]
    with pytest.raises(DataError, match="could produce only 1 distinct prompts"):
        skill.tasks(2, 0, "eval")


def test_a_skill_without_checks_is_one_clear_error(tmp_path):
    folder = write_skill(tmp_path / "no_checks", EXTERNAL_INIT.replace("CHECKS = [RULE]", "CHECKS = []"))
    with pytest.raises(ConfigError) as excinfo:
        load_skill_dir(folder)
    assert "skill 'no_checks' has no checks: register the rules" in one_line_error(excinfo)
    assert "no_checks" not in SKILLS and "skillweave_skill_no_checks" not in sys.modules


@pytest.mark.parametrize(
    "folder, old, new, error",
    [
        ("typo", "CHECKS = [RULE]", 'CHECKS = ["not_trunacted"]', "unknown rule 'not_trunacted'. Did you mean"),
        ("bad_kwarg", "CHECKS = [RULE]", 'CHECKS = [("not_truncated", {"strict": True})]',
         "rule 'not_truncated': got an unexpected keyword argument 'strict'"),
        ("twice", "CHECKS = [RULE]", "CHECKS = [RULE, RULE]", "lists a check twice"),
        ("unregistered", "SKILL = register_skill(", "OTHER = (", "registers no skill 'unregistered'"),
    ],
)
def test_a_bad_skill_folder_is_one_clear_error(tmp_path, folder, old, new, error):
    folder = write_skill(tmp_path / folder, EXTERNAL_INIT.replace(old, new))
    with pytest.raises(ConfigError) as excinfo:
        load_skill_dir(folder)
    assert error in one_line_error(excinfo)


def test_not_a_skill_folder_and_a_misnamed_skill(tmp_path):
    with pytest.raises(ConfigError, match="is not a skill folder"):
        load_skill_dir(tmp_path)
    folder = write_skill(tmp_path / "hello", "")
    (folder / "SKILL.md").write_text("---\nname: greeting2\ndescription: Greet.\n---\n\n1. Say hello.\n")
    with pytest.raises(ConfigError, match="name 'greeting2' differs from its folder 'hello'"):
        register_skill(folder, seed_file_tasks(folder / "tasks.jsonl"), ["not_truncated"], str)
    (folder / "SKILL.md").write_text("---\nname: hello\ndescription: Greet.\n---\n\n")
    with pytest.raises(ConfigError, match="no procedure after the front matter"):
        register_skill(folder, seed_file_tasks(folder / "tasks.jsonl"), ["not_truncated"], str)


def test_a_seed_file_with_a_task_in_both_splits_is_rejected(tmp_path):
    rows = [{"prompt": "Greet Ada.", "meta": {}, "split": split} for split in ("train", "eval")]
    folder = write_skill(tmp_path / "leaky", "", rows)
    with pytest.raises(DataError, match="1 prompts are in both splits"):
        seed_file_tasks(folder / "tasks.jsonl")


def test_eval_yaml_metrics_must_be_pass_and_the_checks(tmp_path):
    iso = SKILLS.get("iso_dates")
    folder = tmp_path / "iso_dates"
    folder.mkdir()
    for with_text in (False, True):
        name = f"{eval_task_name('iso_dates', with_text)}.yaml"
        (folder / name).write_text((iso.folder / name).read_text().replace("  - metric: iso_only\n", "  - metric: x\n"))
    copy = Skill(iso.name, iso.description, iso.procedure, iso.text, folder, iso.tasks, iso.check_spec, iso.reference)
    with pytest.raises(ConfigError, match=r"metric_list is \['pass', 'x', 'iso_value'\]; list pass, then the checks"):
        register_skill_eval_tasks(copy)


# ------------------------------------------------------------------------------------ lm-eval


@pytest.fixture(scope="module")
def loaded():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_paths(EVAL_TASK_NAMES), include_defaults=False)
    return manager.load(EVAL_TASK_NAMES)["tasks"]


@pytest.mark.parametrize("name", SHIPPED)
def test_eval_tasks_are_registered_lm_eval_tasks(loaded, name):
    skill = SKILLS.get(name)
    plain, in_context = (loaded[eval_task_name(name, with_text)] for with_text in (False, True))
    for with_text, task in ((False, plain), (True, in_context)):
        record = EVAL_TASKS.get(eval_task_name(name, with_text))
        assert record.primary_metric == "pass" and record.also_kept == skill.checks
        assert set(skill.files) <= set(record.digest_files)
        assert record.eval_texts() == [t["prompt"] for t in skill.tasks(EVAL_POOL, EVAL_SEED, "eval")]
        assert [m["metric"] for m in task.config.metric_list] == ["pass", *skill.checks]
    plain_docs, context_docs = list(plain.eval_docs), list(in_context.eval_docs)
    assert len(plain_docs) == len(context_docs) == EVAL_POOL
    assert [d["id"] for d in plain_docs] == [d["id"] for d in context_docs]  # paired by task
    assert [plain.doc_to_text(d) for d in plain_docs] == record.eval_texts()  # the inputs alone
    assert all(skill.text.strip() in in_context.doc_to_text(d) for d in context_docs)
    assert skill.text.strip() not in plain.doc_to_text(plain_docs[0])


@pytest.mark.parametrize("task_name", EVAL_TASK_NAMES)
def test_eval_task_scores_the_reference_1_and_a_wrong_answer_0(loaded, task_name):
    task = loaded[task_name]
    checks = SKILLS.get(next(n for n in SHIPPED if task_name.startswith(eval_task_name(n, False)))).checks
    for doc in task.eval_docs:
        right = task.process_results(doc, [doc["reference"]])
        assert right == {"pass": 1.0, **{check: 1.0 for check in checks}}
        wrong = task.process_results(doc, ["I am not sure."])
        assert set(wrong) == {"pass", *checks} and wrong["pass"] == 0.0


def test_eval_size_comes_from_metadata():
    from lm_eval.tasks import TaskManager

    names = [eval_task_name("iso_dates", False), eval_task_name("iso_dates", True)]
    manager = TaskManager(include_path=include_paths(names), include_defaults=False, metadata={"n": 5})
    tasks = manager.load(names)["tasks"]
    assert [len(tasks[name].eval_docs) for name in names] == [5, 5]
    assert SKILLS.get("iso_dates").text.strip() in tasks[names[1]].eval_docs[0]["prompt"]  # still in context
    with pytest.raises(ConfigError, match=f"n must be in 1..{EVAL_POOL}, got 201"):
        TaskManager(include_path=include_paths(names), include_defaults=False, metadata={"n": 201}).load(names[:1])
