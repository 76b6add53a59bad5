"""iso_dates: a date or date-time in a human format, rewritten as one ISO 8601 value."""

from pathlib import Path

from skillweave.skill import generated_tasks, register_skill, register_skill_eval_tasks

from . import checks, generator  # noqa: F401  (checks registers the rules)

SKILL = register_skill(
    Path(__file__).parent, generated_tasks("iso_dates", generator.draw), ("iso_only", "iso_value"), generator.reference
)
register_skill_eval_tasks(SKILL)
