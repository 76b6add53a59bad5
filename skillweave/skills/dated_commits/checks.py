"""dated_commits' own check: the body carries the release date on one `Released: <ISO 8601 value>` line. The
header, type, scope, subject, topic and breaking markers are conventional_commits' checks and the date's
value is iso_dates' iso_value, reused by their rule names; this rule adds where and in what shape the date
goes, which neither of them asks."""

from __future__ import annotations

import re

from skillweave.rules import RuleResult, Sample, rule

RELEASE = re.compile(r"released\s*:", re.IGNORECASE)
"""A line that tries to be the release line, in any case or spacing."""
RELEASE_LINE = re.compile(r"Released: \d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2})?(?:Z|[+-]\d{2}:\d{2})?)?")
"""The release line, its value in the ISO 8601 extended format (iso_value decides whether it is the right one)."""


@rule("dated_commits_release_line")
def dated_commits_release_line(sample: Sample) -> RuleResult:
    """Exactly one line below the header starts `Released:`, and it is `Released: ` and one ISO 8601 value."""
    body = sample["response"].strip().splitlines()[1:]
    found = [line.strip() for line in body if RELEASE.match(line.strip())]
    if len(found) != 1:
        return RuleResult(False, 0.0, f"{len(found)} 'Released:' lines below the header; write exactly one")
    if not RELEASE_LINE.fullmatch(found[0]):
        return RuleResult(False, 0.0, f"{found[0][:60]!r} is not 'Released: <one ISO 8601 value>'")
    return RuleResult(True, 1.0, "one 'Released: <ISO 8601>' line")
