"""si_units checks: the number is the exact conversion within the stated rounding (si_value), and the
answer is written SI style: the number with exactly the decimals asked, one space, the exact symbol, and
nothing else (si_format)."""

from __future__ import annotations

import re
from fractions import Fraction

from skillweave.rules import RuleResult, Sample, rule

_NUMBER = re.compile(r"(?<![\w.])[-\u2212]?\d+(?:\.\d+)?")
_ANSWER = re.compile(r"(?P<number>[-\u2212]?\d+(?:\.(?P<decimals>\d+))?)(?P<space>\s*)(?P<unit>.*)", re.DOTALL)
SPACES = (" ", "\u00a0", "\u202f")
"""A space, a no-break space or a narrow no-break space (the SI brochure's space between number and unit)."""


@rule("si_value")
def si_value(sample: Sample) -> RuleResult:
    """The first number of the response is within half a unit of the last decimal asked of meta["quantity"]["exact"]."""
    quantity = sample["meta"]["quantity"]
    found = _NUMBER.search(sample["response"])
    if found is None:
        return RuleResult(False, 0.0, "no number in the response")
    got, want = Fraction(found.group().replace("\u2212", "-")), Fraction(quantity["exact"])
    if abs(got - want) <= Fraction(1, 2 * 10 ** quantity["places"]):
        return RuleResult(True, 1.0, f"{found.group()} is {float(want):.6g} to {quantity['places']} decimals")
    return RuleResult(False, 0.0, f"{found.group()}, but the conversion gives {float(want):.6g}")


@rule("si_format")
def si_format(sample: Sample) -> RuleResult:
    """The whole response is `<number> <symbol>`: exactly the decimals asked, a leading digit, one space, the
    symbol in its exact case, nothing after it."""
    quantity, text = sample["meta"]["quantity"], sample["response"].strip()
    match = _ANSWER.fullmatch(text)
    if match is None:
        return RuleResult(False, 0.0, f"does not start with the number: {text[:40]!r}")
    decimals = len(match["decimals"] or "")
    if decimals != quantity["places"]:
        return RuleResult(False, 0.0, f"{decimals} decimals, {quantity['places']} asked")
    if match["space"] not in SPACES:
        return RuleResult(
            False,
            0.0,
            "no space between the number and the unit" if not match["space"] else "not one space before the unit",
        )
    if match["unit"] != quantity["symbol"]:
        return RuleResult(False, 0.0, f"unit {match['unit'][:20]!r}, expected the symbol {quantity['symbol']!r} alone")
    return RuleResult(True, 1.0, f"{text!r} is SI style")
