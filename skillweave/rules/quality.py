"""Quality guards: the answer is English, and it is text rather than a loop or noise.

Format-only checkers can be gamed. In the first self-DPO try (STACK.md) IFEval's checkers preferred
fake Italian with the right highlights over a coherent English poem, and a sampled answer stuck in a
loop satisfies "mention X at least 3 times" easily. These guards are domain-independent and cheap:
listed in a rule set, a sample that fails one does not pass, and filter's `make_pairs` never
chooses it (it also checks the guards by name, see `GUARD_RULES`).

Both rules only judge what they can measure: an answer too short for a statistic passes that check
(a terse "42" is not gibberish). Every threshold is a keyword argument, and `None` switches that
check off, so a rule set can keep, say, the loop checks for code and drop the prose statistics.
score = 1 when every check passes, else the worst check's ratio of measured value to threshold (in
[0, 1)), so a nearly-passing answer ranks above noise when filter picks the worst sample.
"""

from __future__ import annotations

import re
import zlib
from typing import Optional

from skillweave.rules.common import RuleResult, Sample, rule

_LETTER_WORD = re.compile(r"[^\W\d_]+")
"""Runs of letters in any script; digits, underscores and punctuation split words."""
_WORD = re.compile(r"\w+")

ENGLISH_FUNCTION_WORDS = frozenset(
    """a about above across after again against all also although am among an and any are around as at
    be because been before being below beneath between beyond both but by can could did do does doing
    down during each either even every few for from further had has have having he her here hers herself
    him himself his how i if in into is it its itself just like may me might more most much must my
    myself near neither no nor not now of off on once one only onto or other our ours ourselves out over
    own same shall she should since so some such than that the their theirs them themselves then there
    these they this those though through till to too toward towards under until up upon us very was we
    were what when where whether which while who whom whose why will with within without would yet you
    your yours yourself yourselves""".split()
)
"""English function words (articles, pronouns, prepositions, conjunctions, auxiliaries): about 40-55%
of the words of English prose, 25-40% of verse and terse lists, under 10% of other languages' text."""

FOREIGN_FUNCTION_WORDS = frozenset(
    # Italian
    """il lo la le gli di da del della delle dei degli dello nel nella nei sul sulla che non per una uno
    sono questo questa questi anche molto come più già ogni tra fra ma se è ed ha hanno essere suo sua
    """
    # Spanish
    """el los las del que por para una con es su sus pero muy más está están son como sin sobre entre
    también hay lo al se mi tu nos
    """
    # French
    """le les des du et est une dans qui pas sur avec pour nous vous ce cette sont au aux ne je elle ils
    mais ou où très été être leur leurs sans
    """
    # German
    """der das und ist nicht ein eine einen einem mit zu von auf sich dem des auch ich wir sie es für
    werden wird sind war wie aber oder noch nach bei aus über
    """
    # Portuguese, Dutch
    """os da das dos em um não mais ao na nos pelo pela uma às é
    het een niet zijn ook dat wat voor maar bij naar
    """.split()
) - ENGLISH_FUNCTION_WORDS - frozenset("come con per pour ou".split())
"""Frequent function words of Italian, Spanish, French, German, Portuguese and Dutch that are not
English words (English ones such as "a", "in", "no", "die", "come" and "per" are left out), and no
one-letter ASCII words, which English text has as variables and abbreviations (the accented "è" and
"é", Italian's and Portuguese's "is", are kept)."""


def _check(value: float, bound: Optional[float], minimum: bool) -> Optional[float]:
    """The check's score: 1.0 if `value` is on the right side of `bound`, else value/bound (for a
    minimum) or bound/value (for a maximum), in [0, 1); None when the check is off (bound None)."""
    if bound is None:
        return None
    if (value >= bound) if minimum else (value <= bound):
        return 1.0
    return max(0.0, value / bound) if minimum else bound / value


def _verdict(checks: dict[str, tuple[Optional[float], str]], judged: str) -> RuleResult:
    """Combine named checks {name: (score or None, description)} into one RuleResult."""
    applied = {name: (s, d) for name, (s, d) in checks.items() if s is not None}
    failed = [d for s, d in applied.values() if s < 1.0]
    score = min((s for s, _ in applied.values()), default=1.0)
    if failed:
        return RuleResult(False, round(score, 4), "; ".join(failed))
    return RuleResult(True, 1.0, "; ".join(d for _, d in applied.values()) or judged)


def _requested_language(meta: dict) -> Optional[str]:
    """The response language an IFEval `language:response_language` instruction asks for, if any."""
    ids = meta.get("instruction_id_list") or []
    for instruction, kwargs in zip(ids, meta.get("kwargs") or [{}] * len(ids)):
        if instruction == "language:response_language" and kwargs and kwargs.get("language"):
            return str(kwargs["language"])
    return None


@rule("is_english")
def is_english(
    sample: Sample,
    *,
    min_words: int = 8,
    min_function_word_share: Optional[float] = 0.12,
    max_foreign_word_share: Optional[float] = 0.12,
    min_letters: int = 40,
    max_non_ascii_letter_share: Optional[float] = 0.1,
) -> RuleResult:
    """The response is English: of its words, at least `min_function_word_share` are English function
    words (ENGLISH_FUNCTION_WORDS) and at most `max_foreign_word_share` are other European languages'
    (FOREIGN_FUNCTION_WORDS); of its letters, at most `max_non_ascii_letter_share` are non-ASCII
    (other scripts). The word checks need `min_words` words, the letter check `min_letters` letters;
    shorter answers pass them. An IFEval instruction asking for another language
    (`language:response_language` with a language other than "en") passes the sample unchecked.

    >>> is_english({"prompt": "", "response": "*La casa* è bella e il sole splende sulla città.", "meta": {}}).passed
    False
    >>> is_english({"prompt": "", "response": "The river hums beneath the bridge at night.", "meta": {}}).passed
    True
    """
    if min_words < 1 or min_letters < 1:
        raise ValueError(f"is_english: min_words and min_letters must be >= 1, got {min_words}, {min_letters}")
    language = _requested_language(sample["meta"])
    if language and language.lower() != "en":
        return RuleResult(True, 1.0, f"the instruction asks for language {language!r}: not checked")
    text = sample["response"]
    letters = [c for c in text if c.isalpha()]
    words = _letter_words(text)
    checks: dict[str, tuple[Optional[float], str]] = {}
    if len(letters) >= min_letters:
        share = sum(not c.isascii() for c in letters) / len(letters)
        score = _check(share, max_non_ascii_letter_share, minimum=False)
        checks["non_ascii"] = (score, f"{share:.0%} non-ASCII letters (max {_pct(max_non_ascii_letter_share)})")
    if len(words) >= min_words:
        english = sum(w in ENGLISH_FUNCTION_WORDS for w in words) / len(words)
        foreign = sum(w in FOREIGN_FUNCTION_WORDS for w in words) / len(words)
        checks["function_words"] = (
            _check(english, min_function_word_share, minimum=True),
            f"{english:.0%} English function words (min {_pct(min_function_word_share)})",
        )
        checks["foreign_words"] = (
            _check(foreign, max_foreign_word_share, minimum=False),
            f"{foreign:.0%} other languages' function words (max {_pct(max_foreign_word_share)})",
        )
    return _verdict(checks, f"too short to judge ({len(words)} words)")


@rule("is_coherent")
def is_coherent(
    sample: Sample,
    *,
    n: int = 3,
    min_words: int = 20,
    min_distinct_ngram_ratio: Optional[float] = 0.5,
    min_chars: int = 200,
    max_compression_ratio: Optional[float] = 4.5,
    max_line_run: Optional[int] = 3,
    max_word_run: Optional[int] = 4,
    min_mean_word_length: Optional[float] = 2.5,
    max_mean_word_length: Optional[float] = 12.0,
) -> RuleResult:
    """The response is not a repetition loop or letter noise:

    - distinct word n-grams / all word n-grams >= `min_distinct_ngram_ratio` (a loop repeats its
      n-grams; prose almost never repeats 3 words), from `min_words` words;
    - raw bytes / zlib-compressed bytes <= `max_compression_ratio` (a loop compresses far better than
      text: English prose of 200-2000 characters gives 1.3-2.5), from `min_chars` characters;
    - no non-blank line repeated more than `max_line_run` times in a row (lines without a letter or
      digit, such as "}" or "---", do not count);
    - no word (two or more characters, not a number) repeated more than `max_word_run` times in a
      row ("no, no, no, no, no ...");
    - mean word length (letters only) within [`min_mean_word_length`, `max_mean_word_length`]: English
      averages 4-5 letters; "a a a" or "xqzvbnmlkjhgf" do not, from `min_words` words.

    >>> is_coherent({"prompt": "", "response": "I love you. " * 30, "meta": {}}).passed
    False
    """
    if n < 1 or min_words < n or min_chars < 1:
        raise ValueError(f"is_coherent: need n >= 1, min_words >= n, min_chars >= 1; got {n}, {min_words}, {min_chars}")
    text = sample["response"]
    words = _WORD.findall(text.lower())
    checks: dict[str, tuple[Optional[float], str]] = {}
    if len(words) >= min_words:
        ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        distinct = len(set(ngrams)) / len(ngrams)
        checks["distinct_ngrams"] = (
            _check(distinct, min_distinct_ngram_ratio, minimum=True),
            f"distinct {n}-gram ratio {distinct:.2f} (min {min_distinct_ngram_ratio})",
        )
    raw = text.encode("utf-8")
    if len(raw) >= min_chars:
        ratio = len(raw) / len(zlib.compress(raw, 9))
        checks["compression"] = (
            _check(ratio, max_compression_ratio, minimum=False),
            f"zlib ratio {ratio:.2f} (max {max_compression_ratio})",
        )
    lines = [line.rstrip() for line in text.splitlines()]
    line_run = _longest_run([line for line in lines if any(c.isalnum() for c in line)])
    checks["line_run"] = (
        _check(line_run, max_line_run, minimum=False),
        f"longest run of one line {line_run} (max {max_line_run})",
    )
    # Numbers and one-letter words repeat legitimately ("1,000,000,000,000", "x x x", "O O O"): each
    # becomes a unique marker, which still breaks up a run ("fib4(5) 4 fib4(6)" in a doctest).
    word_run = _longest_run([w if len(w) > 1 and not w.isdigit() else i for i, w in enumerate(words)])
    checks["word_run"] = (
        _check(word_run, max_word_run, minimum=False),
        f"longest run of one word {word_run} (max {max_word_run})",
    )
    letter_words = _letter_words(text)
    if len(letter_words) >= min_words:
        mean = sum(map(len, letter_words)) / len(letter_words)
        low = _check(mean, min_mean_word_length, minimum=True)
        high = _check(mean, max_mean_word_length, minimum=False)
        applied = [s for s in (low, high) if s is not None]
        checks["word_length"] = (
            min(applied) if applied else None,
            f"mean word length {mean:.1f} (range {min_mean_word_length}..{max_mean_word_length})",
        )
    return _verdict(checks, f"too short to judge ({len(words)} words)")


def _letter_words(text: str) -> list[str]:
    """Lower-cased words made of letters only ("²" and other number signs are not letters)."""
    return [w for w in _LETTER_WORD.findall(text.lower()) if w.isalpha()]


def _longest_run(items: list) -> int:
    """Length of the longest run of equal consecutive items (0 for none)."""
    best = run = 0
    for i, item in enumerate(items):
        run = run + 1 if i and item == items[i - 1] else 1
        best = max(best, run)
    return best


def _pct(value: Optional[float]) -> str:
    return "off" if value is None else f"{value:.0%}"


GUARD_RULES = frozenset({"not_truncated", "is_english", "is_coherent"})
"""Rules whose failure disqualifies a sample as a chosen answer whatever its other scores:
filter's `make_pairs` checks them by name in each scored row, besides the row's `passed`."""
