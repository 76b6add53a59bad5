"""Quality guards (skillweave/rules/quality.py): verdicts case by case, and what they change in the
shipped rule sets and in pair selection (gibberish with the right format is never chosen)."""

from __future__ import annotations

import pytest

from skillweave.config import FilterConfig
from skillweave.rules import RULES, load_rule_set
from skillweave.rules.quality import ENGLISH_FUNCTION_WORDS, FOREIGN_FUNCTION_WORDS, GUARD_RULES
from skillweave.pairs import make_pairs

POEM = """The river hums beneath the bridge,
a silver thread of evening light;
the swallows stitch the fading sky
and fold the meadow into night.

I walk the path my father walked,
past hedges wet with early rain,
and every stone remembers him
and gives his footsteps back again."""

# What a small model wrote when asked for a poem with highlighted sections: Italian-looking text with
# exactly the markdown highlights the checker counts.
FAKE_ITALIAN = (
    "*La luna splende* sopra il mare e la notte è dolce. Il vento canta per le strade della città, e "
    "*il cuore del poeta* sogna una casa lontana. Questo è il tempo della pace, quando le stelle sono "
    "molto belle e il mondo non ha paura."
)
# English title and words sprinkled in: the English share passes, the Italian function words do not.
FAKE_ITALIAN_MIX = (
    "*The poem of the sea*\nLa luna splende sopra il mare, and the night is dolce. Il vento canta per le "
    "strade della città e *il cuore* sogna una casa. Questo è il tempo della pace, quando le stelle sono belle."
)
SPANISH = ("El sol brilla sobre las montañas y los niños juegan en el parque. Es un día muy bonito para "
           "caminar con la familia por la ciudad.")
CHINESE = "火山是地壳中的岩浆喷出地表形成的。当地下的压力增大时，岩浆沿着裂缝上升，最终喷发出来，形成火山口和熔岩流。"
KEYWORD_SALAD = ("Energy journey garden river patience signal market silver window morning nature community "
                 "balance bright history future simple curious energy garden.")
LOOP = "I love the ocean because the ocean is blue. " * 15
PARTIAL_LOOP = (
    "Volcanoes form where magma from deep inside the Earth rises through cracks in the crust. "
    "Over time, layers of lava and ash build a mountain. " + "The volcano erupts and the volcano erupts. " * 8
)
NO_NO_NO = "No, no, no, no, no, no, no, no. I will not go to the garden today because it is raining outside."
LINE_LOOP = "Here is the plan:\n" + "- water the plants\n" * 5 + "That is all."
MATH_SHORT = "12 + 30 = 42\n42"
MATH_WORKED = """Tom has 3 boxes with 12 apples each, so he has 3 * 12 = 36 apples.
He gives away 8, so 36 - 8 = 28.
He buys 5 more: 28 + 5 = 33.
The answer is 33."""
BIG_NUMBER = "A trillion written out in full is 1,000,000,000,000 and a quadrillion is 1,000,000,000,000,000."
CAPS = ("VOLCANOES FORM WHEN MAGMA FROM DEEP INSIDE THE EARTH RISES TO THE SURFACE. THE PRESSURE OF THE GAS "
        "PUSHES IT UP THROUGH CRACKS IN THE CRUST, AND IT COOLS INTO ROCK.")
JSON_ANSWER = ('```json\n{\n  "title": "How volcanoes form",\n  "essay": "Volcanoes form when magma rises from '
               'the mantle through cracks in the crust. A curious visitor to a garden near a volcano can see the '
               'ash in the soil."\n}\n```')
BULLETS = ("* Water the plant when the top of the soil is dry.\n* Give it bright, indirect light.\n"
           "* Feed it once a month in spring and summer.")
SPEC_LIST = "- Brand: Samsung\n- Model: 980 Pro SSD\n- Capacity: 2TB\n- Interface: PCIe NVMe Gen 4\n- Type: M.2 drive"
DOCTEST = '''```python
def fib4(n: int):
    """
    >>> fib4(5)
    4
    >>> fib4(6)
    8
    >>> fib4(7)
    14
    """
    a, b, c, d = 0, 0, 2, 0
    for _ in range(n - 3):
        a, b, c, d = b, c, d, a + b + c + d
    return d
```'''
NOISE = " ".join(
    "qwrtzpxcvbnmlkjh zxcvbnmasdfghjkl poiuytrewqlkjhgf mnbvcxzlkjhgfdsa lkjhgfdsapoiuytr asdfghjklqwertyu "
    "plmoknijbuhvygct qazwsxedcrfvtgby hnujmikolpqazwsx edcrfvtgbyhnujmi rfvtgbyhnujmikol wsxedcrfvtgbyhnu "
    "tgbyhnujmikolpqa yhnujmikolpqazws ujmikolpqazwsxed ikolpqazwsxedcrf olpqazwsxedcrfvt pqazwsxedcrfvtgb "
    "azwsxedcrfvtgbyh xedcrfvtgbyhnujm".split()
)
CODE_LOOP = "```python\ndef f(x):\n" + "    x = x + 1\n" * 12 + "    return x\n```"


def sample(response: str, **meta) -> dict:
    return {"prompt": "Write a poem about the sea.", "response": response, "meta": meta}


def verdict(name: str, response: str, rule_kwargs: dict | None = None, **meta) -> tuple[bool, float]:
    result = RULES.get(name)(**(rule_kwargs or {}))(sample(response, **meta))
    return result.passed, round(result.score, 2)


ENGLISH_CASES = [
    # (name, response, (passed, score)); defaults: min 12% English function words, max 12% foreign
    # function words, max 10% non-ASCII letters
    ("coherent poem", POEM, (True, 1.0)),
    # 0 English function words ("e", "i" are not counted), 43% Italian ones
    ("fake Italian with highlights", FAKE_ITALIAN, (False, 0.0)),
    # the English words lift the English share to 19%, but 32% are Italian function words: 0.12 / 0.32
    ("fake Italian with an English title", FAKE_ITALIAN_MIX, (False, 0.38)),
    ("Spanish", SPANISH, (False, 0.0)),
    # one word for the regex (no spaces), 100% non-ASCII letters: 0.1 / 1.0
    ("Chinese", CHINESE, (False, 0.1)),
    ("keyword salad", KEYWORD_SALAD, (False, 0.0)),
    # a loop of English is English: that is is_coherent's job
    ("loop of English", LOOP, (True, 1.0)),
    ("short correct math answer", MATH_SHORT, (True, 1.0)),  # no words: too short to judge
    ("worked math answer", MATH_WORKED, (True, 1.0)),
    ("all capitals", CAPS, (True, 1.0)),  # change_case:english_capital
    ("JSON-wrapped essay", JSON_ANSWER, (True, 1.0)),  # detectable_format:json_format
    ("bullet list", BULLETS, (True, 1.0)),
    # terse spec lists have almost no function words: rejected (AlpacaEval's GPT-4 answers: 3 of 805 like it)
    ("spec list", SPEC_LIST, (False, 0.0)),
    ("one line", "Paris.", (True, 1.0)),  # too short to judge
    ("a loanword is fine", "I ordered a café au lait and a croissant at the little place on the corner.",
     (True, 1.0)),
]


@pytest.mark.parametrize("name, response, expected", ENGLISH_CASES, ids=[c[0] for c in ENGLISH_CASES])
def test_is_english(name, response, expected):
    assert verdict("is_english", response) == expected


@pytest.mark.parametrize(
    "name, meta, expected",
    [
        # an IFEval instruction asking for Italian makes Italian right: not checked
        ("asked for Italian", {"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "it"}]},
         (True, 1.0)),
        # asked for English: checked as usual
        ("asked for English", {"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "en"}]},
         (False, 0.0)),
        # other instructions do not switch the check off
        ("highlights only", {"instruction_id_list": ["detectable_format:number_highlighted_sections"],
                             "kwargs": [{"num_highlights": 2}]}, (False, 0.0)),
    ],
)
def test_is_english_follows_a_requested_language(name, meta, expected):
    assert verdict("is_english", FAKE_ITALIAN, **meta) == expected


def test_is_english_thresholds_are_kwargs():
    # with the foreign-word check off and no English minimum, the mixed text passes on its letters alone
    off = {"max_foreign_word_share": None, "min_function_word_share": None}
    assert verdict("is_english", FAKE_ITALIAN_MIX, off) == (True, 1.0)
    assert verdict("is_english", SPEC_LIST, {"min_function_word_share": None}) == (True, 1.0)
    assert verdict("is_english", SPEC_LIST, {"min_words": 100}) == (True, 1.0)  # too short to judge
    with pytest.raises(ValueError, match="is_english"):
        RULES.get("is_english")(min_words=0)(sample(POEM))


def test_word_lists_do_not_overlap():
    assert not ENGLISH_FUNCTION_WORDS & FOREIGN_FUNCTION_WORDS
    # one-letter ASCII words are variables and abbreviations in English text; "è" is Italian's "is"
    assert all(len(w) > 1 or not w.isascii() for w in FOREIGN_FUNCTION_WORDS)


COHERENT_CASES = [
    # (name, response, (passed, score)); defaults: distinct 3-grams >= 0.5, zlib ratio <= 4.5 (from 200
    # bytes), a line at most 3 times in a row, a word at most 4 times in a row, mean word length 2.5..12
    ("coherent poem", POEM, (True, 1.0)),
    ("fake Italian is not a loop", FAKE_ITALIAN, (True, 1.0)),  # is_english's job
    # one sentence 15 times: 7% distinct 3-grams (0.07 / 0.5), zlib ratio 13
    ("looping answer", LOOP, (False, 0.14)),
    # a good start, then one sentence 8 times: 39% distinct 3-grams
    ("answer that falls into a loop", PARTIAL_LOOP, (False, 0.78)),
    ("one word 8 times in a row", NO_NO_NO, (False, 0.5)),  # 4 / 8
    ("one line 5 times in a row", LINE_LOOP, (False, 0.6)),  # 3 / 5
    ("short correct math answer", MATH_SHORT, (True, 1.0)),
    ("worked math answer", MATH_WORKED, (True, 1.0)),
    # "000" five times in a row is a number, not a loop
    ("big numbers", BIG_NUMBER, (True, 1.0)),
    ("keyword salad has no loop", KEYWORD_SALAD, (True, 1.0)),
    ("bullet list", BULLETS, (True, 1.0)),
    ("empty answer", "", (True, 1.0)),  # nothing to judge; other rules reject it
    # one-letter words in a row are maths or games, not a loop
    ("tic-tac-toe", "The board after move five:\nX O X\nO O O\nX X O\nO wins with the middle row.", (True, 1.0)),
    # keyboard walks, no two alike: only the mean word length (16.0) gives them away, 12 / 16
    ("letter noise", NOISE, (False, 0.75)),
]


@pytest.mark.parametrize("name, response, expected", COHERENT_CASES, ids=[c[0] for c in COHERENT_CASES])
def test_is_coherent(name, response, expected):
    assert verdict("is_coherent", response) == expected


CODE_KWARGS = {"max_compression_ratio": 6.0, "max_word_run": None, "min_mean_word_length": None,
               "max_mean_word_length": None}


@pytest.mark.parametrize(
    "name, response, kwargs, expected",
    [
        # one-letter variables: mean word length 2.0, under the prose minimum (2.5 -> 0.8)
        ("doctest, defaults", DOCTEST, {}, (False, 0.8)),
        # code's rule set switches word lengths off; doctests repeat the function's name, and the
        # numbers in between break the run
        ("doctest, code kwargs", DOCTEST, CODE_KWARGS, (True, 1.0)),
        ("doctest, word runs on", DOCTEST, {"min_mean_word_length": None}, (True, 1.0)),
        # the same statement 12 times: a repeated line run (3 / 12) and few distinct 3-grams
        ("code loop", CODE_LOOP, CODE_KWARGS, (False, 0.25)),
        # a check switched off does not run: 8 x "no" passes without the word-run check
        ("word run off", NO_NO_NO, {"max_word_run": None}, (True, 1.0)),
    ],
)
def test_is_coherent_on_code_and_switched_off_checks(name, response, kwargs, expected):
    assert verdict("is_coherent", response, kwargs) == expected


def test_is_coherent_rejects_bad_kwargs():
    with pytest.raises(ValueError, match="is_coherent"):
        RULES.get("is_coherent")(n=4, min_words=3)(sample(POEM))


def test_reasons_name_the_failed_check():
    result = RULES.get("is_coherent")()(sample(LOOP))
    assert result.reason == "distinct 3-gram ratio 0.07 (min 0.5); zlib ratio 13.47 (max 4.5)"
    result = RULES.get("is_english")()(sample(FAKE_ITALIAN))
    assert result.reason == "0% English function words (min 12%); 43% other languages' function words (max 12%)"


# --- in the shipped rule sets -----------------------------------------------------------------------

HIGHLIGHTS = {"instruction_id_list": ["detectable_format:number_highlighted_sections"], "kwargs": [{"num_highlights": 2}]}
POEM_WITH_HIGHLIGHTS = POEM.replace("a silver thread", "*a silver thread*").replace("every stone", "*every stone*")


@pytest.mark.parametrize(
    "name, domain, response, meta, rules_failed",
    [
        # the STACK.md failure: the format checker alone passes the fake Italian
        ("fake Italian with the right highlights", "instructions", FAKE_ITALIAN, HIGHLIGHTS, ["is_english"]),
        ("coherent poem with the highlights", "instructions", POEM_WITH_HIGHLIGHTS, HIGHLIGHTS, []),
        ("looping answer with highlights", "instructions", "*Hello* *world* " + LOOP, HIGHLIGHTS, ["is_coherent"]),
        ("short correct math answer", "math", MATH_SHORT, {"answer": "42"}, []),
        ("worked math answer", "math", MATH_WORKED, {"answer": "33"}, []),
        # the right number, at the end of a loop
        ("math loop ending on the answer", "math", "So 6 * 7 is 42 and " * 20 + "42", {"answer": "42"}, ["is_coherent"]),
        ("dialogue loop", "dialogue", LOOP, {}, ["no_repetition_loop", "answers_the_question", "is_coherent"]),
    ],
)
def test_shipped_rule_sets_apply_the_guards(name, domain, response, meta, rules_failed):
    verdict = load_rule_set(domain).score(sample(response, **meta))
    failed = [rule for rule, v in verdict["rules"].items() if not v["passed"]]
    assert failed == rules_failed
    assert verdict["passed"] is (not rules_failed)


@pytest.mark.parametrize(
    "domain, guards",
    [
        ("instructions", ["is_english", "is_coherent", "not_truncated"]),
        ("dialogue", ["is_english", "is_coherent", "not_truncated"]),
        ("math", ["is_coherent", "not_truncated"]),  # no language check: LaTeX words are not English
        ("code", ["is_coherent", "not_truncated"]),  # code is not prose
    ],
)
def test_guards_in_each_rule_set(domain, guards):
    names = [name for name, _ in load_rule_set(domain).rules]
    assert [n for n in names if n in GUARD_RULES] == guards


def test_gibberish_with_the_right_format_is_never_chosen():
    rules = load_rule_set("instructions")
    rows = []
    for i, response in enumerate([FAKE_ITALIAN, POEM_WITH_HIGHLIGHTS, "*Hello* *world* " + LOOP, "no highlights"]):
        v = rules.score(sample(response, **HIGHLIGHTS))
        rows.append({"prompt_id": "p", "sample": i, "response": response, "truncated": False, **v})
    # the format checker passes the fake Italian and the loop; the guards fail them
    assert [r["passed"] for r in rows] == [False, True, False, False]
    assert [round(r["score"], 3) for r in rows] == [0.75, 1.0, 0.791, 0.75]
    (chosen, rejected), = make_pairs(rows, FilterConfig())
    # STACK.md's preference turned around: the poem over the fake Italian (of the two worst at 0.75,
    # the one closer in length to the poem)
    assert (chosen["response"], rejected["response"]) == (POEM_WITH_HIGHLIGHTS, FAKE_ITALIAN)
    # only the poem can be chosen, whatever the pairing
    pairs = make_pairs(rows, FilterConfig(strategy="all_pass_fail", max_pairs_per_prompt=10))
    assert {c["response"] for c, _ in pairs} == {POEM_WITH_HIGHLIGHTS} and len(pairs) == 3
