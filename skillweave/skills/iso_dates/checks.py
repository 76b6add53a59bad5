"""iso_dates checks: the output is one ISO 8601 value (iso_only) and that value is the input's date, time
and offset, at the input's precision (iso_value: a date-only input needs a date-only answer)."""

from __future__ import annotations

import datetime as dt
import re

from skillweave.rules import RuleResult, Sample, rule

_ISO = r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?(Z|[+-]\d{2}:\d{2})?)?"
ISO = re.compile(_ISO)
IN_TEXT = re.compile(rf"(?<![\d-]){_ISO}(?![\d:])")


def parse_iso(match: re.Match) -> tuple[dt.date, dt.time | None, int | None] | None:
    """(date, time or None, UTC offset in minutes or None) of a matched ISO 8601 value, None when a field is
    out of range (month 13, hour 24)."""
    year, month, day, hour, minute, second, offset = match.groups()
    try:
        date = dt.date(int(year), int(month), int(day))
        time = None if hour is None else dt.time(int(hour), int(minute), int(second or 0))
    except ValueError:
        return None
    if offset is None or offset == "Z":
        return date, time, None if offset is None else 0
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    if hours > 23 or minutes > 59:
        return None
    return date, time, (1 if offset[0] == "+" else -1) * (60 * hours + minutes)


@rule("iso_only")
def iso_only(sample: Sample) -> RuleResult:
    """The whole response is one valid ISO 8601 value in the extended format."""
    text = sample["response"].strip()
    match = ISO.fullmatch(text)
    if match and parse_iso(match):
        return RuleResult(True, 1.0, "one ISO 8601 value")
    return RuleResult(False, 0.0, f"not one ISO 8601 value alone: {text[:60]!r}")


@rule("iso_value")
def iso_value(sample: Sample) -> RuleResult:
    """The first ISO 8601 value in the response equals meta["iso"]: same date, time (seconds may be left
    out when zero) and offset (Z equals +00:00), and a time or an offset only where the input gives one."""
    found = IN_TEXT.search(sample["response"])
    if found is None:
        return RuleResult(False, 0.0, "no ISO 8601 date in the response")
    got = parse_iso(found)
    if got is None:
        return RuleResult(False, 0.0, f"{found.group()} is not a valid date or time")
    date, time, offset = got
    want_date, want_time, want_offset = parse_iso(ISO.fullmatch(sample["meta"]["iso"]))
    if date != want_date:
        problem = f"date {date}, expected {want_date}"
    elif (time is None) != (want_time is None):
        problem = "a time the input does not give" if want_time is None else f"no time; the input gives {want_time}"
    elif time != want_time:
        problem = f"time {time}, expected {want_time}"
    elif offset != want_offset:
        problem = (
            f"UTC offset {offset} min, expected {want_offset} min"
            if None not in (offset, want_offset)
            else (
                "a UTC offset the input does not give" if want_offset is None else "no UTC offset; the input gives one"
            )
        )
    else:
        return RuleResult(True, 1.0, f"{found.group()} is the input's moment")
    return RuleResult(False, 0.0, f"{found.group()}: {problem}")
