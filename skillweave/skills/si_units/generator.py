"""si_units tasks: a quantity in a US customary or imperial unit to convert to a named SI unit at a stated
number of decimals. The exact answer is a fraction (every factor is an exact definition). Held out by
quantity: an eval (conversion, value) pair never occurs in training."""

from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

from skillweave.skill import is_held_out

F = Fraction
CONVERSIONS = (  # (source: singular, plural, symbol), (target: plural, symbol), factor, (low, high) source values
    (("mile", "miles", "mi"), ("kilometres", "km"), F("1.609344"), (0.5, 500)),
    (("nautical mile", "nautical miles", "nmi"), ("kilometres", "km"), F("1.852"), (0.5, 300)),
    (("yard", "yards", "yd"), ("metres", "m"), F("0.9144"), (1, 2000)),
    (("foot", "feet", "ft"), ("metres", "m"), F("0.3048"), (1, 30_000)),
    (("inch", "inches", "in"), ("centimetres", "cm"), F("2.54"), (0.25, 120)),
    (("inch", "inches", "in"), ("millimetres", "mm"), F("25.4"), (0.05, 12)),
    (("pound", "pounds", "lb"), ("kilograms", "kg"), F("0.45359237"), (0.5, 400)),
    (("ounce", "ounces", "oz"), ("grams", "g"), F("28.349523125"), (0.25, 64)),
    (("stone", "stone", "st"), ("kilograms", "kg"), F("6.35029318"), (5, 30)),
    (("US gallon", "US gallons", "US gal"), ("litres", "L"), F("3.785411784"), (0.5, 100)),
    (("US fluid ounce", "US fluid ounces", "US fl oz"), ("millilitres", "mL"), F("29.5735295625"), (0.5, 64)),
    (("mile per hour", "miles per hour", "mph"), ("kilometres per hour", "km/h"), F("1.609344"), (1, 200)),
    (("mile per hour", "miles per hour", "mph"), ("metres per second", "m/s"), F("0.44704"), (1, 200)),
    (("knot", "knots", "kn"), ("kilometres per hour", "km/h"), F("1.852"), (1, 60)),
    (
        ("pound per square inch", "pounds per square inch", "psi"),
        ("kilopascals", "kPa"),
        F("0.45359237") * F("9.80665") / F("0.0254") ** 2 / 1000,
        (1, 3000),
    ),
    (("kilocalorie", "kilocalories", "kcal"), ("kilojoules", "kJ"), F("4.184"), (10, 3000)),
    (("degree Fahrenheit", "degrees Fahrenheit", "°F"), ("degrees Celsius", "°C"), None, (-40, 250)),
    (("degree Fahrenheit", "degrees Fahrenheit", "°F"), ("kelvins", "K"), None, (-100, 500)),
)
ASKS = (
    "Convert {quantity} to {target}, rounded to {places}.",
    "How much is {quantity} in {target}? Round to {places}.",
    "Express {quantity} in {target} ({places}).",
)


def exact(value: Fraction, target: str, factor: Fraction | None) -> Fraction:
    """The exact converted value (temperatures by their formula, everything else by its factor)."""
    if factor is not None:
        return value * factor
    celsius = (value - 32) * F(5, 9)
    return celsius if target == "°C" else celsius + F("273.15")


def rounded(value: Fraction, places: int) -> str:
    """`value` rounded half away from zero to `places` decimals, exactly that many written ("-0" is "0")."""
    with localcontext() as context:
        context.prec = 60
        text = str(
            (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
        )
    return text[1:] if text.lstrip("-0.") == "" and text.startswith("-") else text


def draw(rng: random.Random, split: str) -> tuple[str, dict]:
    """One task; meta = {"key": conversion and value, "quantity": {"exact": the exact answer as a fraction,
    "places": decimals asked, "symbol": the SI symbol}}."""
    while True:
        index = rng.randrange(len(CONVERSIONS))
        (singular, plural, symbol), (target, si), factor, (low, high) = CONVERSIONS[index]
        shown = f"{rng.uniform(low, high):.{rng.choice((0, 1, 2))}f}"
        key = f"{index}:{shown}"
        if is_held_out(key) == (split == "eval"):
            break
    if rng.random() < 0.4:
        quantity = f"{shown}{'' if symbol == '°F' and rng.random() < 0.5 else ' '}{symbol}"
    else:
        quantity = f"{shown} {singular if Decimal(shown) == 1 else plural}"
    places = rng.choice((0, 1, 1, 2, 2, 2, 3))
    asked = "a whole number" if places == 0 else f"{places} decimal place{'s' if places > 1 else ''}"
    value = exact(F(shown), si, factor)
    prompt = rng.choice(ASKS).format(quantity=quantity, target=target, places=asked)
    return prompt, {"key": key, "quantity": {"exact": str(value), "places": places, "symbol": si}}


def reference(task: dict) -> str:
    quantity = task["meta"]["quantity"]
    return f"{rounded(F(quantity['exact']), quantity['places'])} {quantity['symbol']}"
