"""conventional_commits checks, one per part of a message that can be wrong: the header's shape and length,
the type (a known one, and the one the change's kind calls for), the scope, the subject's style, whether
the subject is about the change, and the breaking-change markers (`!` and the footer, both iff the change
breaks users)."""

from __future__ import annotations

import re

from skillweave.rules import RuleResult, Sample, rule

TYPES = ("feat", "fix", "docs", "style", "refactor", "perf", "test", "build", "ci", "chore", "revert")
"""The types of the Conventional Commits convention (@commitlint/config-conventional)."""
HEADER = re.compile(r"(?P<type>[A-Za-z]+)(?:\((?P<scope>[^()\s]+)\))?(?P<bang>!)?: (?P<subject>\S.*)")
FOOTER = re.compile(r"BREAKING[ -]CHANGE: \S")
_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset({"also", "been", "each", "every", "from", "have", "instead", "into", "more", "only", "than",
                       "that", "their", "them", "there", "they", "this", "were", "when", "which", "with"})
IMPERATIVE_EXCEPTIONS = frozenset({"bleed", "breed", "bring", "embed", "exceed", "feed", "need", "ping", "proceed",
                                   "ring", "seed", "shed", "speed", "spring", "string", "succeed", "swing"})
"""Imperative verbs that end like a past tense (-ed) or a gerund (-ing)."""


def _lines(sample: Sample) -> list[str]:
    return sample["response"].strip().splitlines() or [""]


def _header(sample: Sample) -> re.Match | None:
    return HEADER.fullmatch(_lines(sample)[0].rstrip())


def _no_header(sample: Sample) -> RuleResult:
    return RuleResult(False, 0.0, f"no 'type(scope): subject' first line: {_lines(sample)[0][:60]!r}")


@rule("commit_header")
def commit_header(sample: Sample, *, max_length: int = 72) -> RuleResult:
    """The first line is `type(scope)!: subject` (scope and ! optional), at most `max_length` characters, and a
    blank line separates it from a body."""
    lines = _lines(sample)
    if _header(sample) is None:
        return _no_header(sample)
    if len(lines[0]) > max_length:
        return RuleResult(False, 0.0, f"the first line has {len(lines[0])} characters, more than {max_length}")
    if len(lines) > 1 and lines[1].strip():
        return RuleResult(False, 0.0, "no blank line between the first line and the body")
    return RuleResult(True, 1.0, "a Conventional Commits header")


@rule("commit_type")
def commit_type(sample: Sample) -> RuleResult:
    """The type is a Conventional Commits type and the one the change calls for (a bug fix is `fix`)."""
    header, want = _header(sample), sample["meta"]["commit"]["type"]
    if header is None:
        return _no_header(sample)
    if header["type"] not in TYPES:
        return RuleResult(False, 0.0, f"{header['type']!r} is not a Conventional Commits type ({', '.join(TYPES)})")
    if header["type"] != want:
        return RuleResult(False, 0.0, f"type {header['type']!r}, but the change calls for {want!r}")
    return RuleResult(True, 1.0, f"type {want!r}")


@rule("commit_scope")
def commit_scope(sample: Sample) -> RuleResult:
    """The scope is the module the change names."""
    header, want = _header(sample), sample["meta"]["commit"]["scope"]
    if header is None:
        return _no_header(sample)
    if header["scope"] != want:
        return RuleResult(False, 0.0, f"scope {header['scope']!r}, but the change is in {want!r}")
    return RuleResult(True, 1.0, f"scope {want!r}")


@rule("commit_subject")
def commit_subject(sample: Sample) -> RuleResult:
    """The subject starts lowercase, does not end with a full stop, and its first word is imperative: a
    heuristic that rejects a past tense (-ed), a gerund (-ing) and a third person (-s, not -ss or -us)."""
    header = _header(sample)
    if header is None:
        return _no_header(sample)
    subject = header["subject"].rstrip()
    first = subject.split()[0]
    if subject[0].isupper():
        return RuleResult(False, 0.0, f"the subject starts with a capital: {subject!r}")
    if subject.endswith("."):
        return RuleResult(False, 0.0, f"the subject ends with a full stop: {subject!r}")
    if first not in IMPERATIVE_EXCEPTIONS and re.search(r"(?:ed|ing|[^su]s)$", first):
        return RuleResult(False, 0.0, f"{first!r} is not the imperative mood ('add', not 'added', 'adds' or 'adding')")
    return RuleResult(True, 1.0, "an imperative, lowercase subject")


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 4 and w not in STOPWORDS}


def _same_word(a: str, b: str) -> bool:
    """The same word up to its ending: equal first five letters, or one a prefix of the other ("wrap", "wrapped")."""
    return a[:5] == b[:5] if min(len(a), len(b)) >= 5 else a.startswith(b) or b.startswith(a)


@rule("commit_topic")
def commit_topic(sample: Sample) -> RuleResult:
    """The subject names the change: it shares a content word (4+ letters, up to its ending) with what the
    description says changed (meta["commit"]["change"]); a heuristic that rejects subjects like "fix a bug"."""
    header, change = _header(sample), sample["meta"]["commit"]["change"]
    if header is None:
        return _no_header(sample)
    subject = _content_words(header["subject"])
    if any(_same_word(a, b) for a in subject for b in _content_words(change)):
        return RuleResult(True, 1.0, "the subject names the change")
    return RuleResult(False, 0.0, f"the subject shares no word with the change ({change!r})")


@rule("commit_breaking")
def commit_breaking(sample: Sample) -> RuleResult:
    """`!` before the colon and a `BREAKING CHANGE:` footer (in the last paragraph, with any other trailers) when
    meta["commit"]["breaking"] says what breaks, neither otherwise."""
    header, breaking = _header(sample), sample["meta"]["commit"]["breaking"] is not None
    if header is None:
        return _no_header(sample)
    bang = header["bang"] is not None
    lines = _lines(sample)
    blanks = [i for i, line in enumerate(lines) if not line.strip()]
    footer = any(FOOTER.match(line) for line in lines[blanks[-1] + 1 :]) if blanks else False
    if breaking and not (bang and footer):
        missing = " and ".join(
            m for m, present in (("the '!'", bang), ("the BREAKING CHANGE footer", footer)) if not present
        )
        return RuleResult(False, 0.0, f"the change breaks users but the message lacks {missing}")
    if not breaking and (bang or footer):
        return RuleResult(False, 0.0, "the message marks a breaking change; this change breaks nothing")
    return RuleResult(True, 1.0, "marked breaking" if breaking else "not marked breaking")
