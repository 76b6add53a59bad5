"""conventional_commits: a commit message in the Conventional Commits format, from a change description."""

from pathlib import Path

from skillweave.skill import generated_tasks, register_skill, register_skill_eval_tasks

from . import checks, generator  # noqa: F401  (checks registers the rules)

SKILL = register_skill(
    Path(__file__).parent,
    generated_tasks("conventional_commits", generator.draw),
    ("commit_header", "commit_type", "commit_scope", "commit_subject", "commit_topic", "commit_breaking"),
    generator.reference,
)
register_skill_eval_tasks(SKILL)
