"""Dialogue verifiers: loose lexical checks for open requests, which have no gold answer.

They cannot tell a good answer from a bad one; they catch the failures a small model makes when
sampled (too short or rambling, stuck in a loop, refusing a harmless request, drifting off topic),
so that DPO prefers answers without them. Scores are partial credit in [0, 1].
"""

from __future__ import annotations

import re

from skillweave.rules.common import RuleResult, Sample, rule

_WORD = re.compile(r"\w+")

REFUSAL_PATTERNS = (
    r"\bi(?: am|'m)? (?:sorry,? (?:but )?)?(?:can't|cannot|can not|won't|will not) (?:help|assist)(?! but)",
    r"\bi(?: am|'m) (?:not able|unable) to (?:help|assist|answer|provide|comply)",
    r"\bi (?:can't|cannot|can not) (?:provide|answer|comply|fulfill|do that)",
    r"\bas an ai\b",
    r"\bas a (?:large )?language model\b",
)
"""Regular expressions (case-insensitive) for a refusal; "I can't help but ..." is not one."""

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more
    most my myself no nor not now of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves
    answer ask describe explain give help know let like list make need please provide show tell think
    want way write""".split()
)
"""Function words, and the request verbs a response echoes without saying anything about the topic."""


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stem(word: str) -> str:
    """A crude stem, plural "s" off and then the first 6 letters, so that "tomatoes" in a request
    matches "tomato" in the answer and "computers" matches "computing"."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word[:6]


def content_words(text: str) -> set[str]:
    """Stemmed words of `text` that say what it is about: no stopwords, numbers or one-letter words."""
    return {_stem(w) for w in _words(text) if w not in STOPWORDS and len(w) > 1 and not w.isdigit()}


@rule("length_between")
def length_between(sample: Sample, *, min_words: int, max_words: int) -> RuleResult:
    """The response has min_words..max_words words (whitespace-separated): a one-line answer to an
    open request is unhelpful, a very long one rambles. Outside the range the score falls off as the
    ratio to the nearer bound.

    >>> length_between({"prompt": "", "response": "one two", "meta": {}}, min_words=4, max_words=8).score
    0.5
    """
    if not 0 < min_words <= max_words:
        raise ValueError(f"length_between: need 0 < min_words <= max_words, got {min_words}, {max_words}")
    count = len(sample["response"].split())
    reason = f"{count} words, expected {min_words}..{max_words}"
    if count < min_words:
        return RuleResult(False, count / min_words, reason)
    if count > max_words:
        return RuleResult(False, max_words / count, reason)
    return RuleResult(True, 1.0, reason)


@rule("no_repetition_loop")
def no_repetition_loop(sample: Sample, *, n: int = 4, max_repeated_fraction: float = 0.2) -> RuleResult:
    """At most `max_repeated_fraction` of the response's word n-grams repeat an earlier one: a sampled
    answer stuck in a loop repeats whole phrases, while ordinary prose rarely repeats 4 words.

    score = 1 up to the threshold, then falls linearly to 0 for an answer that is one phrase repeated.

    >>> no_repetition_loop({"prompt": "", "response": "go on " * 20, "meta": {}}).passed
    False
    """
    if n < 1 or not 0.0 <= max_repeated_fraction < 1.0:
        raise ValueError(f"no_repetition_loop: need n >= 1 and 0 <= max_repeated_fraction < 1, got {n}, "
                         f"{max_repeated_fraction}")
    words = _words(sample["response"])
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not ngrams:
        return RuleResult(True, 1.0, f"fewer than {n} words")
    repeated = 1.0 - len(set(ngrams)) / len(ngrams)
    score = min(1.0, (1.0 - repeated) / (1.0 - max_repeated_fraction))
    return RuleResult(repeated <= max_repeated_fraction, score, f"{repeated:.0%} of word {n}-grams repeated")


@rule("no_refusal")
def no_refusal(sample: Sample, *, patterns: tuple[str, ...] | list[str] = REFUSAL_PATTERNS) -> RuleResult:
    """The response does not refuse: the requests are benign, so a refusal is never the better answer.

    `patterns` are case-insensitive regular expressions (default: REFUSAL_PATTERNS); curly
    apostrophes count as straight ones.

    >>> no_refusal({"prompt": "", "response": "As an AI, I have no opinions.", "meta": {}}).passed
    False
    """
    text = sample["response"].replace("\u2019", "'")
    for pattern in patterns:
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return RuleResult(False, 0.0, f"refusal: {match.group()!r}")
    return RuleResult(True, 1.0, "no refusal")


@rule("answers_the_question")
def answers_the_question(sample: Sample, *, min_fraction: float = 0.25) -> RuleResult:
    """At least `min_fraction` of the request's content words (see content_words) occur in the
    response: a cheap lexical sign that the answer is about what was asked, not a check that it is right.

    score = min(1, shared fraction / min_fraction); a request without content words passes.

    >>> answers_the_question({"prompt": "Tips for growing tomatoes?", "response": "Water tomato plants daily.",
    ...                       "meta": {}}).passed
    True
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"answers_the_question: min_fraction must be in (0, 1], got {min_fraction}")
    asked = content_words(sample["prompt"])
    if not asked:
        return RuleResult(True, 1.0, "the request has no content words")
    shared = asked & content_words(sample["response"])
    fraction = len(shared) / len(asked)
    reason = f"{len(shared)}/{len(asked)} content words of the request in the response"
    return RuleResult(fraction >= min_fraction, min(1.0, fraction / min_fraction), reason)
