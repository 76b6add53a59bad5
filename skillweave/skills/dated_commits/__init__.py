"""dated_commits: a Conventional Commits message whose body carries the release date in ISO 8601, the task that
needs two shipped skills at once (conventional_commits and iso_dates, for LoRA Soups CAT). It reuses their
checks by rule name and imports neither."""

from pathlib import Path

from skillweave.skill import generated_tasks, register_skill, register_skill_eval_tasks

from . import checks, generator  # noqa: F401  (checks registers the rule)

SKILL = register_skill(
    Path(__file__).parent,
    generated_tasks("dated_commits", generator.draw),
    ("commit_header", "commit_type", "commit_scope", "commit_subject", "commit_topic", "commit_breaking",
     "iso_value", "dated_commits_release_line"),
    generator.reference,
)
register_skill_eval_tasks(SKILL)
