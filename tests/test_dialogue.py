"""The dialogue domain: rule verdicts case by case, its rule set, prompt source and lm-eval task."""

from __future__ import annotations

import pytest

from skillweave.prompts import PROMPT_SOURCES
from skillweave.rules import RULES, load_rule_set
from skillweave.domains.dialogue import eval_set as task_utils

REQUEST = "What are some practical tips for caring for houseplants?"
GOOD = (
    "Caring for houseplants is mostly about light and water. Put each plant where its light needs are met, "
    "water only when the top of the soil is dry, and use pots with drainage holes so roots never sit in water."
)


def sample(response: str, prompt: str = REQUEST, **meta) -> dict:
    return {"prompt": prompt, "response": response, "meta": meta}


def verdict(name: str, kwargs: dict, smp: dict) -> tuple[bool, float]:
    result = RULES.get(name)(**kwargs)(smp)
    return result.passed, round(result.score, 3)


LENGTH_CASES = [
    # (name, response, (passed, score))
    ("inside the range", "one two three four five", (True, 1.0)),
    ("lower bound counts", "one two three four", (True, 1.0)),
    ("upper bound counts", " ".join(["w"] * 8), (True, 1.0)),
    ("too short: ratio to min", "one two", (False, 0.5)),
    ("empty answer scores 0", "", (False, 0.0)),
    ("too long: ratio to max", " ".join(["w"] * 16), (False, 0.5)),
    ("words split on any whitespace", "one\ntwo\tthree  four", (True, 1.0)),
]


@pytest.mark.parametrize("name, response, expected", LENGTH_CASES, ids=[c[0] for c in LENGTH_CASES])
def test_length_between(name, response, expected):
    assert verdict("length_between", {"min_words": 4, "max_words": 8}, sample(response)) == expected


REPETITION_CASES = [
    # (name, response, (passed, score)); n=4, max_repeated_fraction=0.2
    ("ordinary prose repeats nothing", GOOD, (True, 1.0)),
    ("shorter than n words", "yes indeed", (True, 1.0)),
    # 20 copies of a 2-word phrase: 37 4-grams, 2 distinct -> 35/37 repeated -> (2/37) / 0.8
    ("a loop", "go on " * 20, (False, 0.068)),
    # a 6-word sentence twice: 9 4-grams, 6 distinct -> 1/3 repeated -> (2/3) / 0.8
    ("a sentence said twice", "water the plant once a week. " * 2, (False, 0.833)),
    # case and punctuation do not hide a loop
    ("case and punctuation ignored", "Go ON! " * 20, (False, 0.068)),
]


@pytest.mark.parametrize("name, response, expected", REPETITION_CASES, ids=[c[0] for c in REPETITION_CASES])
def test_no_repetition_loop(name, response, expected):
    assert verdict("no_repetition_loop", {"n": 4, "max_repeated_fraction": 0.2}, sample(response)) == expected


REFUSAL_CASES = [
    # (name, response, passed)
    ("a helpful answer", GOOD, True),
    ("can't help", "I'm sorry, but I can't help with that.", False),
    ("cannot assist", "I cannot assist with this request.", False),
    ("curly apostrophe", "I can\u2019t help with that.", False),
    ("as an AI, any case", "AS AN AI, I do not have hobbies.", False),
    ("language model", "As a large language model I have no opinion.", False),
    ("unable to", "I am unable to provide that information.", False),
    # an idiom, not a refusal
    ("can't help but", "I can't help but love a well-watered fern.", True),
    # "ai" inside a word is not "as an AI"
    ("word boundary", "As an aide once told me, water less.", True),
]


@pytest.mark.parametrize("name, response, passed", REFUSAL_CASES, ids=[c[0] for c in REFUSAL_CASES])
def test_no_refusal(name, response, passed):
    assert verdict("no_refusal", {}, sample(response)) == (passed, float(passed))


def test_no_refusal_patterns_are_configurable():
    # custom patterns replace the defaults
    assert verdict("no_refusal", {"patterns": [r"\bno way\b"]}, sample("No way.")) == (False, 0.0)
    assert verdict("no_refusal", {"patterns": [r"\bno way\b"]}, sample("As an AI ...")) == (True, 1.0)


ON_TOPIC_CASES = [
    # (name, prompt, response, (passed, score)); min_fraction=0.25
    # request content words: practical, tip, caring, housep(lants) -> 4
    ("on topic", REQUEST, GOOD, (True, 1.0)),  # caring, housep shared: 2/4
    ("off topic", REQUEST, "The stock market rose sharply on Tuesday after the earnings report.", (False, 0.0)),
    # 1/4 shared meets the threshold exactly
    ("one of four", REQUEST, "Here is a tip: ask a friend.", (True, 1.0)),
    # echoing only stopwords and request verbs ("what", "some", "give") earns nothing
    ("stopwords do not count", "Give me some tips for knitting.", "What? Give some, me.", (False, 0.0)),
    # plural s, then the 6-letter stem: "tomatoes" matches "tomato" (1/2 shared)
    ("stemming", "How do I grow tomatoes?", "Plant each tomato in full sun.", (True, 1.0)),
    ("case and punctuation ignored", "BROADWAY actors?", "broadway, actor.", (True, 1.0)),
    # a request made only of stopwords cannot be checked
    ("no content words", "What is it?", "Anything.", (True, 1.0)),
    # partial credit below the threshold: 1 of 8 shared -> 0.125 / 0.25
    ("partial credit", "python rust golang java kotlin swift ruby scala", "python", (False, 0.5)),
]


@pytest.mark.parametrize("name, prompt, response, expected", ON_TOPIC_CASES, ids=[c[0] for c in ON_TOPIC_CASES])
def test_answers_the_question(name, prompt, response, expected):
    assert verdict("answers_the_question", {"min_fraction": 0.25}, sample(response, prompt)) == expected


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("length_between", {"min_words": 10, "max_words": 5}),  # empty range
        ("no_repetition_loop", {"max_repeated_fraction": 1.0}),  # would divide by zero
        ("answers_the_question", {"min_fraction": 0.0}),  # every answer would pass
    ],
)
def test_rules_reject_bad_kwargs(name, kwargs):
    with pytest.raises(ValueError, match=name):
        RULES.get(name)(**kwargs)(sample(GOOD))


def test_rule_set_scores_good_above_bad():
    rules = load_rule_set("dialogue")
    assert [name for name, _ in rules.rules] == [
        "length_between", "no_repetition_loop", "no_refusal", "answers_the_question", "is_english", "is_coherent",
        "not_truncated",
    ]
    good = rules.score(sample(GOOD))
    assert (good["passed"], good["score"]) == (True, 1.0)
    refusal = rules.score(sample("I'm sorry, but I can't help with that."))
    assert not refusal["passed"] and refusal["score"] < good["score"]
    truncated = rules.score(sample(GOOD, truncated=True))
    assert not truncated["passed"] and truncated["rules"]["not_truncated"]["score"] == 0.0


def test_dialogue_requests_are_seeded_distinct_and_on_topic():
    source = PROMPT_SOURCES.get("dialogue_requests")
    rows = source(200, seed=3)
    assert rows == source(200, seed=3) and rows != source(200, seed=4)
    assert len({r["prompt"] for r in rows}) == 200
    assert all(r["meta"]["topic"] in r["prompt"] for r in rows)
    with pytest.raises(ValueError, match="only 1800 distinct"):
        source(1801, seed=0)


def test_dialogue_requests_are_not_alpaca_eval():
    instructions = set(task_utils.load_alpaca_eval()[task_utils.SPLIT]["instruction"])
    assert not instructions & {r["prompt"] for r in PROMPT_SOURCES.get("dialogue_requests")(1800, seed=0)}


def test_dialogue_task_data_and_scorer():
    docs = task_utils.load_alpaca_eval()[task_utils.SPLIT]
    assert len(docs) == 805 and len(set(docs["id"])) == 805
    doc = docs[0]  # "What are the names of some famous actors that started their careers on Broadway?"
    answer = ("Many famous actors started their careers on Broadway, among them Hugh Jackman, Idina Menzel, "
              "Audra McDonald and Sutton Foster, before moving on to film and television.")
    assert task_utils.process_dialogue(doc, [answer]) == {"rule_score": 1.0}
    # a refusal: too short (5/20 words), refusal 0, off topic 0, no loop 1, too short for the quality
    # guards 1 + 1, not_truncated 1 -> (0.25 + 4) / 7
    assert task_utils.process_dialogue(doc, ["I cannot help with that."]) == {"rule_score": pytest.approx(4.25 / 7)}
