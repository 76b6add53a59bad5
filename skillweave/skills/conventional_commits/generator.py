"""conventional_commits tasks: a change description (its kind, module, what changed, whether it breaks
users) to write a commit message for. Held out by change: every fourth change of each type is only ever
asked in the eval split, under any module."""

from __future__ import annotations

import random

INTROS = {  # type -> how a description of that kind of change begins
    "feat": "New feature in the {scope} module: it {what}.",
    "fix": "Bug fix in the {scope} module: it {what}, and this change fixes that.",
    "docs": "Documentation only, for the {scope} module: {what}.",
    "style": "Formatting only in the {scope} module, behaviour unchanged: {what}.",
    "refactor": "Restructuring in the {scope} module, no change in behaviour: {what}.",
    "perf": "Performance improvement in the {scope} module: {what}.",
    "test": "Tests only, for the {scope} module: {what}.",
    "build": "Build or dependency change for the {scope} module: {what}.",
    "ci": "CI configuration change for the {scope} module: {what}.",
    "chore": "Maintenance in the {scope} module, no code change: {what}.",
}
CHANGES = {  # type -> (the subject a correct message may use, what the description says)
    "feat": (
        ("add csv export", "can now export results as CSV"),
        ("support cursor pagination", "now supports cursor-based pagination"),
        ("add a dry-run mode", "gains a dry-run mode that shows changes without applying them"),
        ("allow custom retry policies", "lets users set their own retry policy"),
        ("add dark mode", "can now render in dark mode"),
        ("read yaml configuration files", "now reads its configuration from YAML files too"),
        ("limit the request rate per client", "can now limit the request rate of each client"),
        ("show a progress bar for long jobs", "shows a progress bar during long jobs"),
        ("support bulk deletion", "can now delete many records in one call"),
        ("notify a webhook when a job finishes", "can now call a webhook when a job finishes"),
        ("add search by tag", "lets users search items by tag"),
        ("accept gzip-compressed uploads", "now accepts gzip-compressed uploads"),
    ),
    "fix": (
        ("handle empty input", "crashed when the input was empty"),
        ("clear stale results after a restart", "returned stale results after a restart"),
        ("close file handles on timeout", "leaked file handles when a request timed out"),
        ("round negative amounts correctly", "rounded negative amounts the wrong way"),
        ("respect the configured timeout", "ignored the configured timeout"),
        ("reject expired tokens", "accepted expired tokens"),
        ("mask passwords in logs", "wrote passwords to the log in plain text"),
        ("count retried requests once", "counted retried requests twice"),
        ("support paths with spaces", "failed on file paths that contain spaces"),
        ("keep the last item of each page", "dropped the last item of every page"),
        ("stop hanging when the connection closes early", "hung when the connection closed early"),
        ("parse dates in the local time zone", "parsed dates in UTC instead of the local time zone"),
    ),
    "docs": (
        ("document the retry options", "the retry options are now documented"),
        ("fix typos in the readme", "typos in the README were corrected"),
        ("add an example for batch jobs", "a usage example for batch jobs was added"),
        ("explain the cache settings", "the cache settings are now explained"),
        ("update the install guide", "the installation guide was brought up to date"),
        ("describe the error codes", "a table of error codes was added"),
        ("add a migration guide", "a guide for migrating from version 1 was added"),
        ("clarify the timeout defaults", "the description of the timeout defaults was made clearer"),
    ),
    "style": (
        ("apply black formatting", "the code was reformatted with black"),
        ("sort imports", "imports were sorted"),
        ("remove trailing whitespace", "trailing whitespace was removed"),
        ("use double quotes consistently", "single quotes were replaced with double quotes"),
        ("wrap long lines", "lines longer than 100 characters were wrapped"),
        ("replace tabs with spaces", "tabs used for indentation were replaced with spaces"),
        ("normalise blank lines", "blank lines between functions were normalised"),
        ("add missing trailing commas", "missing trailing commas were added"),
    ),
    "refactor": (
        ("extract the validation helpers", "the validation helpers were moved into their own module"),
        ("merge duplicate parsing code", "two copies of the parsing code were merged into one"),
        ("replace callbacks with async functions", "callbacks were replaced with async functions"),
        ("split the request handler", "the large request handler was split into smaller functions"),
        ("rename the session class", "the Session class was renamed to Connection"),
        ("remove the unused cache layer", "an unused cache layer was removed"),
        ("flatten nested error handling", "nested error handling was flattened"),
        ("use dataclasses for settings", "settings objects are now dataclasses"),
    ),
    "perf": (
        ("cache compiled templates", "compiled templates are now cached, so pages render faster"),
        ("batch database writes", "database writes are batched, which halves the save time"),
        ("avoid copying large buffers", "large buffers are no longer copied on every read"),
        ("index lookups by user id", "lookups by user id use an index instead of a full scan"),
        ("stream large responses", "large responses are streamed instead of loaded into memory"),
        ("reuse http connections", "HTTP connections are reused instead of reopened"),
        ("precompute sort keys", "sort keys are computed once instead of on every comparison"),
        ("load images lazily", "images are loaded only when they come into view"),
    ),
    "test": (
        ("cover the empty input case", "tests for empty input were added"),
        ("add tests for token refresh", "token refresh is now covered by tests"),
        ("make the timeout test deterministic", "a flaky timeout test was made deterministic"),
        ("add property tests for parsing", "property-based tests for parsing were added"),
        ("check the error messages", "the error messages are now checked by tests"),
        ("add an integration test for uploads", "an integration test for uploads was added"),
        ("remove duplicated fixtures", "duplicated test fixtures were removed"),
        ("test the retry limits", "tests now check the retry limits"),
    ),
    "build": (
        ("upgrade requests to 2.32", "the requests dependency was upgraded to 2.32"),
        ("pin numpy below 2", "numpy was pinned below version 2"),
        ("build the package with hatchling", "the package build now uses hatchling"),
        ("build wheels for arm64", "wheels are now built for arm64 too"),
        ("bundle the fonts in the wheel", "the fonts are now included in the wheel"),
        ("drop the unused lodash dependency", "the unused lodash dependency was removed"),
        ("regenerate the lockfile", "the lockfile was regenerated"),
        ("enable link-time optimisation", "release builds now use link-time optimisation"),
    ),
    "ci": (
        ("run the tests on python 3.12", "the CI now also runs the tests on Python 3.12"),
        ("cache pip downloads", "CI jobs now cache pip downloads"),
        ("add a lint job", "a lint job was added to the pipeline"),
        ("upload coverage reports", "the pipeline now uploads coverage reports"),
        ("schedule a nightly build", "a nightly build was scheduled"),
        ("split the test job by platform", "the test job now runs separately per platform"),
        ("fail on compiler warnings", "the pipeline now fails on compiler warnings"),
        ("publish the docs on tags", "the docs are published when a tag is pushed"),
    ),
    "chore": (
        ("update the changelog", "the changelog was updated"),
        ("bump the version to 2.4.0", "the version number was bumped to 2.4.0"),
        ("ignore editor swap files", "editor swap files were added to .gitignore"),
        ("update the license year", "the license year was updated"),
        ("add a codeowners file", "a CODEOWNERS file was added"),
        ("delete old release scripts", "old release scripts were deleted"),
        ("update the issue templates", "the issue templates were updated"),
        ("add an editorconfig file", "an .editorconfig file was added"),
    ),
}
SCOPES = ("api", "auth", "billing", "cache", "cli", "config", "db", "parser", "scheduler", "search", "ui", "upload")
CAN_BREAK = ("feat", "fix", "refactor", "perf")
BREAKAGES = (
    "the --legacy flag is removed",
    "the config key timeout is renamed to timeout_s",
    "the v1 endpoints are removed",
    "responses no longer include the meta field",
    "the minimum supported Python version is now 3.10",
    "load() now returns a list instead of a tuple",
)


def _held_out(index: int) -> bool:
    return index % 4 == 3


def draw(rng: random.Random, split: str) -> tuple[str, dict]:
    """One task; meta = {"key": the change, "commit": {"type", "scope", "subject" (a correct one), "change" (what the
    description says changed), "breaking": what breaks or None}}."""
    kind = rng.choice(tuple(CHANGES))
    subject, what = rng.choice([c for i, c in enumerate(CHANGES[kind]) if _held_out(i) == (split == "eval")])
    scope = rng.choice(SCOPES)
    description = INTROS[kind].format(scope=scope, what=what)
    breaking = rng.choice(BREAKAGES) if kind in CAN_BREAK and rng.random() < 0.35 else None
    if breaking:
        description += f" This breaks existing users: {breaking}."
    elif kind in CAN_BREAK and rng.random() < 0.3:
        description += " Existing users are not affected."
    commit = {"type": kind, "scope": scope, "subject": subject, "change": what, "breaking": breaking}
    meta = {"key": f"{kind}: {subject}", "commit": commit}
    return f"Write the commit message for this change.\n\nChange: {description}", meta


def reference(task: dict) -> str:
    commit = task["meta"]["commit"]
    header = f"{commit['type']}({commit['scope']}){'!' if commit['breaking'] else ''}: {commit['subject']}"
    return f"{header}\n\nBREAKING CHANGE: {commit['breaking']}." if commit["breaking"] else header
