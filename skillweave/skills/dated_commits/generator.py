"""dated_commits tasks: a change description (as in conventional_commits) plus a sentence saying when it was
released in a human date format (as in iso_dates), to write a commit message with the release date in ISO
8601. Held out on both units: an eval task has a held-out change (every fourth of each type) and a held-out
day (skill.is_held_out, the partition iso_dates uses, so its eval days are never in iso_dates' training
either); a training task has neither."""

from __future__ import annotations

import datetime as dt
import random

from skillweave.skill import is_held_out

INTROS = {  # type -> how a description of that kind of change begins
    "feat": "New capability in the {scope} module: it {what}.",
    "fix": "Bug fix in the {scope} module: it {what}; this change fixes that.",
    "perf": "Speed-up in the {scope} module: {what}.",
    "refactor": "Code restructuring in the {scope} module: {what}.",
    "docs": "Documentation only, for the {scope} module: {what}.",
    "build": "Build or dependency change for the {scope} module: {what}.",
}
CHANGES = {  # type -> (the subject a correct message may use, what the description says)
    "feat": (
        ("add an audit log", "now keeps an audit log of every admin action"),
        ("send a webhook when an invoice is paid", "can now call a webhook when an invoice is paid"),
        ("export reports as pdf", "can now export reports as PDF files"),
        ("allow login with passkeys", "lets users log in with passkeys"),
        ("add keyboard shortcuts", "gains keyboard shortcuts for the common actions"),
        ("schedule recurring jobs", "can now schedule jobs that repeat"),
        ("show usage quotas", "shows each account's usage quota"),
        ("filter results by date", "lets users filter results by a date range"),
    ),
    "fix": (
        ("stop double charging on retry", "charged customers twice when a payment was retried"),
        ("restore sessions after a restart", "logged every user out after a restart"),
        ("escape quotes in csv output", "wrote broken CSV when a field contained quotes"),
        ("handle leap days", "crashed on leap days such as February 29"),
        ("free memory after large uploads", "kept large uploads in memory after they finished"),
        ("sort names with accents correctly", "sorted names with accents in the wrong order"),
        ("retry on connection resets", "gave up at the first connection reset"),
        ("keep the cursor position on reload", "lost the cursor position when the page reloaded"),
    ),
    "perf": (
        ("cache user permissions", "user permissions are cached instead of fetched on every request"),
        ("compress api responses", "responses are compressed, which cuts their size by 70%"),
        ("resize images in parallel", "images are resized in parallel"),
        ("skip unchanged files on sync", "files that did not change are skipped during a sync"),
        ("pool database connections", "database connections are pooled instead of opened per query"),
        ("load the dashboard incrementally", "the dashboard loads its widgets one at a time"),
        ("debounce search requests", "search requests are sent only after typing pauses"),
        ("precompute daily totals", "daily totals are computed once overnight"),
    ),
    "refactor": (
        ("move the mailer into its own module", "the mailer code was moved into a separate module"),
        ("replace the config singleton", "the global config singleton was replaced by explicit arguments"),
        ("split the billing service", "the billing service was split into invoicing and payments"),
        ("remove the legacy storage adapter", "the legacy storage adapter was removed"),
        ("use an enum for status codes", "status codes are now an enum instead of strings"),
        ("inline the tiny helpers", "several tiny helper functions were inlined"),
        ("rename the worker pool", "the WorkerPool class was renamed to Executor"),
        ("merge the two retry loops", "two retry loops were merged into one"),
    ),
    "docs": (
        ("document the release process", "the release process is now documented"),
        ("add a faq page", "a page of frequently asked questions was added"),
        ("fix broken links in the guide", "broken links in the user guide were fixed"),
        ("explain the permission model", "the permission model is now explained"),
        ("add examples for the cli", "usage examples for the command line were added"),
        ("describe the backup settings", "the backup settings are now described"),
        ("update the api reference", "the API reference was brought up to date"),
        ("add a glossary", "a glossary of terms was added"),
    ),
    "build": (
        ("upgrade django to 5.0", "the Django dependency was upgraded to 5.0"),
        ("drop support for node 16", "Node 16 is no longer supported by the build"),
        ("pin the rust toolchain", "the Rust toolchain is now pinned to one version"),
        ("vendor the parser library", "the parser library is now vendored"),
        ("build docker images for arm64", "Docker images are now built for arm64 too"),
        ("switch the build to poetry", "the build now uses poetry instead of setup.py"),
        ("remove the unused moment dependency", "the unused moment.js dependency was removed"),
        ("strip debug symbols from releases", "release binaries no longer contain debug symbols"),
    ),
}
SCOPES = ("api", "auth", "billing", "cli", "db", "mailer", "search", "ui")
CAN_BREAK = ("feat", "fix", "perf", "refactor")
BREAKAGES = (
    "the old /v1 routes are gone",
    "the setting max_retries is renamed to retries",
    "Python 3.9 is no longer supported",
    "export() now returns bytes instead of a string",
)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_DAY = dt.date(2000, 1, 1)
DAYS = (dt.date(2035, 12, 31) - FIRST_DAY).days + 1
SENTENCES = ("It was released {when}.", "It shipped {when}.", "The release went out {when}.",
             "It reached production {when}.")


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


DATE_FORMATS = (  # date -> (text, the convention it needs or None)
    lambda d: (f"{MONTHS[d.month - 1]} {_ordinal(d.day)}, {d.year}", None),
    lambda d: (f"{d.day} {MONTHS[d.month - 1]} {d.year}", None),
    lambda d: (f"the {_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}", None),
    lambda d: (f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}", None),
    lambda d: (f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year}", None),
    lambda d: (f"{d.month:02d}/{d.day:02d}/{d.year}", "Dates in this message are written month/day/year."),
    lambda d: (f"{d.day:02d}/{d.month:02d}/{d.year}", "Dates in this message are written day/month/year."),
    lambda d: (f"{d.day}.{d.month}.{d.year}", "Dates in this message are written day.month.year."),
)


def _held_out(index: int) -> bool:
    return index % 4 == 3


def _time(rng: random.Random) -> tuple[str, str]:
    """(a time, maybe with a UTC offset, as a person writes it; its ISO 8601 suffix)."""
    hour, minute = rng.randrange(24), rng.choice((0, 15, 30, rng.randrange(60)))
    if rng.random() < 0.4:
        text = f"{hour:02d}:{minute:02d}"
    else:
        text = str(hour % 12 or 12) + (f":{minute:02d}" if minute else "") + (" am" if hour < 12 else " pm")
    iso = f"T{hour:02d}:{minute:02d}"
    if rng.random() < 0.4:
        offset = rng.choice((0, rng.choice((-8, -5, 1, 2, 9))))
        text += " UTC" if offset == 0 else f" UTC{offset:+d}"
        iso += "Z" if offset == 0 else f"{'+' if offset > 0 else '-'}{abs(offset):02d}:00"
    return text, iso


def draw(rng: random.Random, split: str) -> tuple[str, dict]:
    """One task; meta = {"key": the change and the day, "commit": {"type", "scope", "subject" (a correct one),
    "change" (what the description says changed), "breaking": what breaks or None}, "iso": the release's
    ISO 8601 value}: the namespaces conventional_commits' and iso_dates' checks read."""
    eval_split = split == "eval"
    kind = rng.choice(tuple(CHANGES))
    subject, what = rng.choice([c for i, c in enumerate(CHANGES[kind]) if _held_out(i) == eval_split])
    while True:
        day = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))
        if is_held_out(day.isoformat()) == eval_split:
            break
    scope = rng.choice(SCOPES)
    description = INTROS[kind].format(scope=scope, what=what)
    breaking = rng.choice(BREAKAGES) if kind in CAN_BREAK and rng.random() < 0.35 else None
    if breaking:
        description += f" This breaks existing users: {breaking}."
    date_text, convention = rng.choice(DATE_FORMATS)(day)
    when, iso = f"on {date_text}", day.isoformat()
    if rng.random() < 0.5:
        time_text, suffix = _time(rng)
        when, iso = rng.choice((f"on {date_text} at {time_text}", f"at {time_text} on {date_text}")), iso + suffix
    released = rng.choice(SENTENCES).format(when=when) + (f" ({convention})" if convention else "")
    commit = {"type": kind, "scope": scope, "subject": subject, "change": what, "breaking": breaking}
    meta = {"key": f"{kind}: {subject} / {day.isoformat()}", "commit": commit, "iso": iso}
    return f"Write the commit message for this change and its release.\n\nChange: {description}\n{released}", meta


def reference(task: dict) -> str:
    commit, iso = task["meta"]["commit"], task["meta"]["iso"]
    header = f"{commit['type']}({commit['scope']}){'!' if commit['breaking'] else ''}: {commit['subject']}"
    footer = f"\n\nBREAKING CHANGE: {commit['breaking']}." if commit["breaking"] else ""
    return f"{header}\n\nReleased: {iso}{footer}"
