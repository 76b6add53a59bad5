"""Rule verdicts, case by case, and rule-set loading with its one-line errors."""

from __future__ import annotations

import socket
from fractions import Fraction

import nltk
import pytest

from skillweave.core.errors import ConfigError
from skillweave.domains.code.verifiers import extract_code, split_tests
from skillweave.domains.instructions.verifiers import ensure_punkt_tab
from skillweave.rules import RULES, RuleResult, load_rule_set


def sample(response: str, **meta) -> dict:
    return {"prompt": "Write about cats.", "response": response, "meta": meta}


def test_registry_holds_every_rule():
    # a subset: other tests register rules of their own in the same session
    assert {"final_number_matches", "ifeval_instructions", "not_truncated", "unit_tests_pass", "is_english",
            "is_coherent"} <= set(RULES.names())


# --- math ---------------------------------------------------------------------------------------

MATH_CASES = [
    # (name, response, gold, passed)
    ("last number", "3 apples plus 5 more make 8", "8", True),
    ("last number wrong", "3 apples plus 5 more make 9", "8", False),
    ("thousands comma", "The total is 1,234 dollars.", "1234", True),
    ("gold with comma", "The total is 1234.", "1,234", True),
    ("negative", "So x = -7", "-7", True),
    ("negative sign missing", "So x = 7", "-7", False),
    ("minus between numbers is not a sign", "the range is 3-4", "4", True),
    ("decimal", "It costs 12.50 in total", "12.5", True),
    ("decimal within rel_tol", "about 0.3333333333", "1/3", True),
    ("fraction", "The probability is 3/4", "0.75", True),
    ("latex fraction", r"$\frac{3}{4}$", "0.75", True),
    ("unicode minus", "x = \u221212", "-12", True),
    # an explicit final answer beats numbers that come after it
    ("answer is beats later numbers", "The answer is 42. Check: 40 + 2 = 42, not 41.", "42", True),
    ("#### marker", "6 * 7 = 42\n#### 42\nI used 2 steps.", "42", True),
    ("boxed beats everything", r"The answer is 5. Wait, \boxed{6}. Later 7.", "6", True),
    ("nested braces in boxed", r"\boxed{\frac{1}{2}}", "0.5", True),
    ("boxed without a number fails", r"\boxed{x} and 3", "3", False),
    ("answer: marker", "Answer: -3.5", "-3.5", True),
    ("no number", "I do not know.", "3", False),
    ("trailing period", "So the result is 15.", "15", True),
    ("zero", "0", "0", True),
    # the default abs_tol is tiny: a rounded answer is wrong
    ("rounding is wrong", "3.14", "3.14159", False),
    # a model's numbers of any size are read, bounded, without stopping the eval
    ("400 digits", "The answer is 1" + "0" * 400, "10", False),
    ("5,000 digits", "The answer is " + "9" * 5000, "9", False),
    ("huge exponent", "The answer is 1e99999999", "1", False),
    ("tiny exponent is zero", "The answer is 1e-99999999", "0", True),
    ("bounded over tiny", "The answer is 1e300/0.000001", "1", False),
    ("large but exact", "The answer is 1" + "0" * 300, "1" + "0" * 300, True),
]


@pytest.mark.parametrize("name, response, gold, passed", MATH_CASES, ids=[c[0] for c in MATH_CASES])
def test_final_number_matches(name, response, gold, passed):
    result = RULES.get("final_number_matches")()(sample(response, answer=gold))
    assert (result.passed, result.score) == (passed, float(passed)), result.reason


def test_numbers_are_bounded_before_any_big_integer_is_built():
    from skillweave.domains.math.verifiers import MAX_ORDER, parse_number

    assert parse_number("-0012.50") == Fraction(-25, 2) and parse_number(".5") == Fraction(1, 2)
    assert parse_number("1e300") == 10**MAX_ORDER == parse_number("1e9999999999")
    assert parse_number("-" + "7" * 5000) == -(10**MAX_ORDER)
    assert parse_number("1e-300") == Fraction(1, 10**300) and parse_number("0.00001e-296") == 0


def test_final_number_matches_tolerance_is_configurable():
    loose = RULES.get("final_number_matches")(rel_tol=1e-3)
    assert loose(sample("3.14", answer="3.14159")).passed


def test_final_number_matches_rejects_non_numeric_gold():
    with pytest.raises(ValueError, match="not a number"):
        RULES.get("final_number_matches")()(sample("42", answer="forty-two"))


# --- not_truncated ------------------------------------------------------------------------------

TRUNCATED_CASES = [
    ("truncated", {"truncated": True}, False),  # hit max_new_tokens: never a chosen answer
    ("complete", {"truncated": False}, True),
    ("flag absent", {}, True),  # generators that do not set it are trusted
]


@pytest.mark.parametrize("name, meta, passed", TRUNCATED_CASES, ids=[c[0] for c in TRUNCATED_CASES])
def test_not_truncated(name, meta, passed):
    assert RULES.get("not_truncated")()(sample("Paris.", **meta)).passed is passed


# --- code ---------------------------------------------------------------------------------------

ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2, 2) == 4"

CODE_CASES = [
    # (name, response, score, passed)
    ("fenced correct", "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.", 1.0, True),
    ("bare code", "def add(a, b):\n    return a + b\n", 1.0, True),
    # partial credit: add(2, 2) == 4 holds for a * b too
    ("partially right", "```python\ndef add(a, b):\n    return a * b if a == b else a + b + 1\n```", 1 / 3, False),
    ("syntax error", "```python\ndef add(a, b)\n    return a + b\n```", 0.0, False),
    ("wrong name", "```python\ndef plus(a, b):\n    return a + b\n```", 0.0, False),
    # the block defining the entry point wins over an earlier usage example
    ("entry point block chosen",
     "```python\nprint(add(1, 2))\n```\n```python\ndef add(a, b):\n    return a + b\n```", 1.0, True),
    # a demo under the main guard reads stdin: it must not run
    ("main guard ignored",
     "```python\ndef add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n```",
     1.0, True),
    # a truncated response's unclosed fence still counts up to the end
    ("unclosed fence", "```python\ndef add(a, b):\n    return a + b\n", 1.0, True),
    ("exits before the tests", "```python\nimport sys\ndef add(a, b):\n    return a + b\nsys.exit(0)\n```", 0.0, False),
    # printing what looks like a pass marker earns nothing without the per-run nonce
    ("forged markers",
     "```python\ndef add(a, b):\n    return None\nfor i in range(3):\n    print('0' * 16, 'pass', i)\n```", 0.0, False),
]


@pytest.mark.parametrize("name, response, score, passed", CODE_CASES, ids=[c[0] for c in CODE_CASES])
def test_unit_tests_pass(name, response, score, passed):
    result = RULES.get("unit_tests_pass")()(sample(response, entry_point="add", tests=ADD_TESTS))
    assert result.passed is passed, result.reason
    assert result.score == pytest.approx(score), result.reason


def test_unit_tests_pass_reports_the_failed_test():
    response = "```python\ndef add(a, b):\n    return a - b if a < 0 else a + b\n```"
    result = RULES.get("unit_tests_pass")()(sample(response, entry_point="add", tests=ADD_TESTS))
    assert result.reason.startswith("2/3 tests passed; failed: assert add(-1, 1) == 0")


def test_unit_tests_pass_times_out_and_keeps_earlier_verdicts():
    response = "```python\ndef add(a, b):\n    while a == -1:\n        pass\n    return a + b\n```"
    result = RULES.get("unit_tests_pass")(timeout_s=1)(sample(response, entry_point="add", tests=ADD_TESTS))
    assert not result.passed and result.score == pytest.approx(1 / 3)
    assert "timeout after 1s" in result.reason


def test_unit_tests_pass_runs_setup_statements():
    tests = "import math\nexpected = math.factorial(4)\nassert add(20, 4) == expected"
    result = RULES.get("unit_tests_pass")()(sample("def add(a, b):\n    return a + b", tests=tests))
    assert result.passed and result.reason == "1/1 tests passed"


EXTRACT_CASES = [
    ("no fence", "def f():\n    return 1", None, "def f():\n    return 1"),
    ("python fence", "x\n```python\na = 1\n```\ny", None, "a = 1\n"),
    # a python block wins over an earlier shell block
    ("python preferred", "```bash\npip install x\n```\n```py\na = 1\n```", None, "a = 1\n"),
    ("any fence", "```\na = 2\n```", None, "a = 2\n"),
    ("entry point", "```python\nf(1)\n```\n```python\ndef f(x):\n    return x\n```", "f", "def f(x):\n    return x\n"),
]


@pytest.mark.parametrize("name, response, entry_point, expected", EXTRACT_CASES, ids=[c[0] for c in EXTRACT_CASES])
def test_extract_code(name, response, entry_point, expected):
    assert extract_code(response, entry_point) == expected


def test_split_tests_separates_setup_from_tests():
    units = split_tests("import math\nassert f(1) == 1\ncheck(f)\nx = 2")
    assert units == [(False, "import math"), (True, "assert f(1) == 1"), (True, "check(f)"), (False, "x = 2")]
    with pytest.raises(ValueError, match="no assert"):
        split_tests("import math")
    with pytest.raises(ValueError, match="does not parse"):
        split_tests("assert (")


# --- instructions -------------------------------------------------------------------------------

IFEVAL_CASES = [
    # (name, response, instruction ids, kwargs, strict, score)
    ("lowercase followed", "all of this is lowercase.", ["change_case:english_lowercase"], [{}], True, 1.0),
    ("lowercase broken", "Not lowercase.", ["change_case:english_lowercase"], [{}], True, 0.0),
    # half the instructions followed: partial credit
    ("one of two", "cats, dogs and birds.",
     ["change_case:english_lowercase", "punctuation:no_comma"], [{}, {}], True, 0.5),
    ("keyword frequency", "AI here, AI there, ai everywhere.",
     ["keywords:frequency"], [{"keyword": "AI", "frequency": 3, "relation": "at least"}], True, 1.0),
    ("word limit", "one two three four five six seven eight nine ten eleven",
     ["length_constraints:number_words"], [{"num_words": 10, "relation": "less than"}], True, 0.0),
    # sentence counting goes through NLTK's punkt_tab: "Dr." does not end a sentence
    ("sentences via punkt", "Dr. Smith came. He sat. He left.",
     ["length_constraints:number_sentences"], [{"num_sentences": 3, "relation": "at least"}], True, 1.0),
    ("sentences too few", "Dr. Smith came home.",
     ["length_constraints:number_sentences"], [{"num_sentences": 2, "relation": "at least"}], True, 0.0),
    ("title", "<<cats>>\ncats sleep a lot.", ["detectable_format:title"], [{}], True, 1.0),
    ("end phrase", "Cats sleep. Any other questions?",
     ["startend:end_checker"], [{"end_phrase": "Any other questions?"}], True, 1.0),
    # IFEval-style kwargs with None for unused keys are accepted (lm-eval drops them)
    ("None kwargs", "no commas here", ["punctuation:no_comma"], [{"num_words": None, "relation": None}], True, 1.0),
    # strict fails on the chatty first line, loose drops it and passes
    ("strict sees first line", "Sure!\nall lowercase here.", ["change_case:english_lowercase"], [{}], True, 0.0),
    ("loose drops first line", "Sure!\nall lowercase here.", ["change_case:english_lowercase"], [{}], False, 1.0),
    ("empty response fails", "  ", ["punctuation:no_comma"], [{}], True, 0.0),
]


@pytest.mark.parametrize("name, response, ids, kwargs, strict, score", IFEVAL_CASES, ids=[c[0] for c in IFEVAL_CASES])
def test_ifeval_instructions(name, response, ids, kwargs, strict, score):
    rule = RULES.get("ifeval_instructions")(strict=strict)
    result = rule(sample(response, instruction_id_list=ids, kwargs=kwargs))
    assert (result.score, result.passed) == (score, score == 1.0), result.reason


def test_ifeval_instructions_names_the_failed_ids():
    rule = RULES.get("ifeval_instructions")()
    ids = ["change_case:english_lowercase", "punctuation:no_comma"]
    result = rule(sample("Cats, dogs.", instruction_id_list=ids, kwargs=[{}, {}]))
    assert result.reason == "0/2 followed; failed: change_case:english_lowercase, punctuation:no_comma"


@pytest.mark.parametrize(
    "ids, kwargs, match",
    [
        (["punctuation:no_coma"], [{}], "invalid instruction"),  # unknown id
        (["punctuation:no_comma"], [{"num_words": 3}], "invalid instruction"),  # kwarg the checker lacks
        (["punctuation:no_comma"], [], "kwargs"),  # lengths differ
    ],
)
def test_ifeval_instructions_rejects_bad_meta(ids, kwargs, match):
    with pytest.raises(ValueError, match=match):
        RULES.get("ifeval_instructions")()(sample("x", instruction_id_list=ids, kwargs=kwargs))


def test_ensure_punkt_tab_builds_the_model_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SKILLWEAVE_CACHE", str(tmp_path))
    monkeypatch.delenv("NLTK_DATA", raising=False)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))

    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    root = ensure_punkt_tab()
    english = root / "tokenizers" / "punkt_tab" / "english"
    assert root == tmp_path / "nltk_data"
    files = sorted(p.name for p in english.iterdir())
    assert files == ["abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt"]
    assert nltk.data.path[0] == str(root)
    assert ensure_punkt_tab() == root  # idempotent
    assert nltk.data.path.count(str(root)) == 1
    tokenizer = nltk.tokenize.PunktTokenizer("english")  # loads from root, bypassing nltk's cache
    text = "Hello there. How are you? Dr. Smith is here."
    assert tokenizer.tokenize(text) == ["Hello there.", "How are you?", "Dr. Smith is here."]
    assert nltk.tokenize.sent_tokenize("Hello there. How are you?") == ["Hello there.", "How are you?"]


# --- rule sets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain, names",
    [
        ("math", ["final_number_matches", "is_coherent", "not_truncated"]),
        ("code", ["unit_tests_pass", "is_coherent", "not_truncated"]),
        ("instructions", ["ifeval_instructions", "is_english", "is_coherent", "not_truncated"]),
    ],
)
def test_shipped_rule_sets_load(domain, names):
    rule_set = load_rule_set(domain)
    assert rule_set.domain == domain
    assert [name for name, _ in rule_set.rules] == names


def test_rule_set_score_combines_rules():
    rule_set = load_rule_set("math")
    right = rule_set.score(sample("so 2 + 2 = 4", answer="4"))
    assert right == {
        "passed": True,
        "score": 1.0,
        "rules": {
            "final_number_matches": {"passed": True, "score": 1.0, "reason": "4 (last number) equals gold 4"},
            "is_coherent": {"passed": True, "score": 1.0,
                            "reason": "longest run of one line 1 (max 3); longest run of one word 1 (max 4)"},
            "not_truncated": {"passed": True, "score": 1.0, "reason": "complete"},
        },
    }
    # a correct but truncated answer is not chosen
    truncated = rule_set.score(sample("so 2 + 2 = 4", answer="4", truncated=True))
    assert (truncated["passed"], truncated["score"]) == (False, pytest.approx(2 / 3))


def write(tmp_path, text: str):
    path = tmp_path / "custom.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("unknown rule", "rules:\n  - name: final_numbr_matches\n",
         "unknown rule 'final_numbr_matches'. Did you mean 'final_number_matches'?"),
        ("bad kwarg", "rules:\n  - name: final_number_matches\n    kwargs: {rel_tl: 0.1}\n",
         "rule 'final_number_matches': got an unexpected keyword argument 'rel_tl'; it accepts rel_tol, abs_tol"),
        ("kwargs to a rule without any", "rules:\n  - name: not_truncated\n    kwargs: {strict: true}\n",
         "it accepts no arguments"),
        ("not a list", "rules: final_number_matches\n", "expected exactly one key, 'rules'"),
        ("extra top-level key", "rules: []\nname: x\n", "expected exactly one key, 'rules'"),
        ("entry without name", "rules:\n  - kwargs: {}\n", "rule #1 must be a mapping with 'name'"),
        ("kwargs not a mapping", "rules:\n  - name: not_truncated\n    kwargs: [1]\n", "kwargs must be a mapping"),
        ("duplicate", "rules:\n  - name: not_truncated\n  - name: not_truncated\n", "listed twice"),
        ("invalid yaml", "rules: [\n", "invalid YAML"),
    ],
)
def test_rule_set_errors_are_one_line_naming_the_file(tmp_path, name, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as excinfo:
        load_rule_set("custom", path)
    assert message in str(excinfo.value)
    assert str(excinfo.value).startswith(f"{path}: ")
    assert "\n" not in str(excinfo.value)


def test_missing_rule_set_lists_the_available_ones():
    message = r"mth\.yaml: no rule set for domain 'mth'; available in .*: code, dialogue, instructions, math"
    with pytest.raises(ConfigError, match=message):
        load_rule_set("mth")


def test_rule_factory_checks_kwargs():
    with pytest.raises(TypeError, match="rule 'unit_tests_pass': got an unexpected keyword argument 'timeout'"):
        RULES.get("unit_tests_pass")(timeout=3)
    assert isinstance(RULES.get("not_truncated")()(sample("x")), RuleResult)
