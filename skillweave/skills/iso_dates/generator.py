"""iso_dates tasks: a sentence with a date, maybe a time and a UTC offset, in a human format, with the
convention a numeric or two-digit-year date needs stated. Held out by calendar day: an eval date never
appears in training, in any format."""

from __future__ import annotations

import datetime as dt
import random

from skillweave.skill import is_held_out

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_DAY = dt.date(1950, 1, 1)
DAYS = (dt.date(2049, 12, 31) - FIRST_DAY).days + 1
SENTENCES = (
    "The release goes out {when}",
    "The invoice is dated {when}",
    "Her flight lands {when}",
    "The server logged the outage {when}",
    "The lease ends {when}",
    "We signed the contract {when}",
    "The package was delivered {when}",
    "Submissions close {when}",
)
"""Completed with a full stop, unless the time already ends with one ("4 p.m.")."""
MONTH_DAY_YEAR = "Dates in this message are written month/day/year."
DAY_MONTH_YEAR = "Dates in this message are written day/month/year."


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


DATE_FORMATS = (  # date -> (text, the convention it needs or None)
    lambda d: (f"{MONTHS[d.month - 1]} {_ordinal(d.day)}, {d.year}", None),
    lambda d: (f"{d.day} {MONTHS[d.month - 1]} {d.year}", None),
    lambda d: (f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}", None),
    lambda d: (f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}", None),
    lambda d: (f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year}", None),
    lambda d: (
        f"{d.day} {MONTHS[d.month - 1][:3]} {d.year % 100:02d}",
        f"Two-digit years here are in the {d.year // 100}00s.",
    ),
    lambda d: (f"{d.month:02d}/{d.day:02d}/{d.year}", MONTH_DAY_YEAR),
    lambda d: (f"{d.month}/{d.day}/{d.year}", MONTH_DAY_YEAR),
    lambda d: (f"{d.day:02d}/{d.month:02d}/{d.year}", DAY_MONTH_YEAR),
    lambda d: (f"{d.day}.{d.month}.{d.year}", "Dates in this message are written day.month.year."),
)


def _time_text(rng: random.Random, hour: int, minute: int, second: int | None) -> str:
    if (hour, minute, second) == (12, 0, None) and rng.random() < 0.5:
        return "noon"
    if rng.random() < 0.4:  # the 24-hour clock
        return f"{hour:02d}:{minute:02d}" + ("" if second is None else f":{second:02d}")
    am, pm = rng.choice((("am", "pm"), ("AM", "PM"), ("a.m.", "p.m.")))
    clock = str(hour % 12 or 12)
    if minute or second is not None:
        clock += f":{minute:02d}" + ("" if second is None else f":{second:02d}")
    return f"{clock} {am if hour < 12 else pm}"


def _offset_text(rng: random.Random, minutes: int) -> str:
    if minutes == 0:
        return rng.choice(("UTC", "GMT"))
    sign, (hours, rest) = "+" if minutes > 0 else "-", divmod(abs(minutes), 60)
    if rest or rng.random() < 0.4:
        return f"UTC{sign}{hours:02d}:{rest:02d}"
    return f"{rng.choice(('UTC', 'GMT'))}{sign}{hours}"


def _iso_offset(minutes: int) -> str:
    hours, rest = divmod(abs(minutes), 60)
    return "Z" if minutes == 0 else f"{'+' if minutes > 0 else '-'}{hours:02d}:{rest:02d}"


def draw(rng: random.Random, split: str) -> tuple[str, dict]:
    """One task; meta = {"key": the day, "iso": the ISO 8601 answer}."""
    while True:
        day = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))
        if is_held_out(day.isoformat()) == (split == "eval"):
            break
    date_text, convention = rng.choice(DATE_FORMATS)(day)
    when, iso = date_text, day.isoformat()
    if rng.random() < 0.6:
        hour, minute = rng.randrange(24), 0 if rng.random() < 0.2 else rng.randrange(60)
        second = rng.randrange(60) if rng.random() < 0.25 else None
        time_text = _time_text(rng, hour, minute, second)
        iso += f"T{hour:02d}:{minute:02d}" + ("" if second is None else f":{second:02d}")
        if rng.random() < 0.35:
            offset = rng.choice((0, 0, 60 * rng.randint(-11, 12), rng.choice((330, 345, 570, -210, -570))))
            time_text += " " + _offset_text(rng, offset)
            iso += _iso_offset(offset)
        when = rng.choice(
            (f"{date_text} at {time_text}", f"at {time_text} on {date_text}", f"{date_text}, {time_text}")
        )
    sentence = rng.choice(SENTENCES).format(when=when)
    sentence += ("" if sentence.endswith(".") else ".") + (f" ({convention})" if convention else "")
    asked = "date and time" if "T" in iso else "date"
    return f"{sentence}\n\nWrite the {asked} from this sentence in ISO 8601.", {"key": day.isoformat(), "iso": iso}


def reference(task: dict) -> str:
    return task["meta"]["iso"]
