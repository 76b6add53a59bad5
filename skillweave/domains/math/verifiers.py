"""Math verifier: the model's final number equals the gold answer."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from skillweave.rules.common import RuleResult, Sample, rule

_NUMBER = re.compile(
    r"(?<![\w.])"  # not the tail of a word, a decimal or an expression like "x-5" / "3-4"
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"  # 1,234.5 / -12 / 1.5e3
    r"(?:\s*/\s*\d+(?:\.\d+)?)?"  # a fraction: 3/4
    r"|(?<![\w.])[-+]?\.\d+"  # .5
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?[\d.,]+)\s*\}\s*\{\s*([-+]?[\d.,]+)\s*\}")
_ANSWER_MARKER = re.compile(r"answer\s*(?:is|:|=)\s*:?", re.IGNORECASE)


def extract_final_number(text: str) -> tuple[Fraction, str] | None:
    """The model's final numeric answer and where it came from, or None.

    Preference order: the last \\boxed{...} (its first number), then the text after the last
    "####", then after the last "answer is"/"answer:", and otherwise the last number in the text.
    Thousands commas, signs, decimals, a/b fractions and \\frac{a}{b} are understood.

    >>> extract_final_number("so 3 + 4 = 7. The answer is 7.")
    (Fraction(7, 1), 'answer is')
    >>> extract_final_number(r"$\\boxed{-\\frac{3}{4}}$")
    (Fraction(-3, 4), '\\\\boxed{}')
    """
    text = text.replace("\u2212", "-").replace("{,}", ",")  # unicode minus, LaTeX thousands
    boxed = _last_boxed(text)
    if boxed is not None:
        number = _first_number(boxed)
        return (number, r"\boxed{}") if number is not None else None
    if "####" in text:
        number = _first_number(text.rsplit("####", 1)[1])
        if number is not None:
            return number, "####"
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        number = _first_number(text[markers[-1].end() :])
        if number is not None:
            return number, "answer is"
    numbers = _numbers(text)
    return (numbers[-1], "last number") if numbers else None


def parse_number(text: str) -> Fraction | None:
    """The first number in `text` (a gold answer like "1,234", "-2.5", "3/4"), or None."""
    return _first_number(text.replace("\u2212", "-"))


# Beyond 10**300 in size a number is read as +-10**300 and below 10**-300 as 0: no answer of these tasks is
# there, and a model's "1e99999999" or 5,000 digits would otherwise cost minutes of big-integer work or stop
# the eval (Python reads at most 4,300 digits into an int).
MAX_ORDER = 300
_DECIMAL = re.compile(r"([-+]?)0*(\d*)(?:\.(\d*))?(?:[eE]([-+]?\d+))?")


def _bounded(token: str) -> Fraction:
    """A decimal token ("-1234.5e3") as a Fraction, its size bounded by MAX_ORDER before any big
    integer is built."""
    sign, whole, decimals, exponent = _DECIMAL.fullmatch(token).groups()  # `whole` without leading zeros
    decimals = decimals or ""
    if not (whole + decimals).strip("0"):
        return Fraction(0)
    exponent = exponent or "0"
    if len(exponent.lstrip("+-").lstrip("0")) > 5:  # beyond any order the bound lets through
        shift = MAX_ORDER * 2 * (-1 if exponent.startswith("-") else 1)
    else:
        shift = int(exponent)
    # The decimal order of the leading digit: 123.4 -> 2, 0.05 -> -2.
    order = (len(whole) - 1 if whole else -1 - (len(decimals) - len(decimals.lstrip("0")))) + shift
    if order > MAX_ORDER:
        return Fraction(-(10**MAX_ORDER) if sign == "-" else 10**MAX_ORDER)
    if order < -MAX_ORDER:
        return Fraction(0)
    return Fraction(token)


def _numbers(text: str) -> list[Fraction]:
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    numbers = []
    for match in _NUMBER.finditer(text):
        numerator, _, denominator = match.group().replace(",", "").replace(" ", "").partition("/")
        value = _bounded(numerator)
        if denominator:
            if _bounded(denominator) == 0:
                continue
            value /= _bounded(denominator)
        numbers.append(value)
    return numbers


def _first_number(text: str) -> Fraction | None:
    numbers = _numbers(text)
    return numbers[0] if numbers else None


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind(r"\boxed{"), text.rfind(r"\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return text[i:]  # unclosed (e.g. truncated): take what is there


@rule("final_number_matches")
def final_number_matches(sample: Sample, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> RuleResult:
    """Score 1 when the response's final number equals `meta["answer"]` within tolerance.

    Raises:
        ValueError: the gold answer is not a number (a data bug, not a wrong response).
    """
    gold_text = str(sample["meta"]["answer"])
    gold = parse_number(gold_text)
    if gold is None:
        raise ValueError(f"final_number_matches: gold answer {gold_text!r} is not a number")
    found = extract_final_number(sample["response"])
    if found is None:
        return RuleResult(False, 0.0, "no number in the response")
    value, source = found
    shown = _show(value)
    if value == gold or _close(value, gold, rel_tol, abs_tol):
        return RuleResult(True, 1.0, f"{shown} ({source}) equals gold {gold_text}")
    return RuleResult(False, 0.0, f"{shown} ({source}) differs from gold {gold_text}")


def _close(value: Fraction, gold: Fraction, rel_tol: float, abs_tol: float) -> bool:
    """math.isclose on floats, and in exact arithmetic where a value is beyond a float's range (a bounded
    number over a tiny one, 10**300 / 10**-20)."""
    try:
        return math.isclose(float(value), float(gold), rel_tol=rel_tol, abs_tol=abs_tol)
    except OverflowError:
        return abs(value - gold) <= max(Fraction(rel_tol) * max(abs(value), abs(gold)), Fraction(abs_tol))


def _show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    try:
        return f"{value} = {float(value):g}"
    except OverflowError:
        return str(value)
