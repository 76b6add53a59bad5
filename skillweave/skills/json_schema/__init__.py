"""json_schema: JSON alone that validates against a given schema and carries exactly the requested values."""

from pathlib import Path

from skillweave.skill import generated_tasks, register_skill, register_skill_eval_tasks

from . import checks, generator  # noqa: F401  (checks registers the rules)

SKILL = register_skill(
    Path(__file__).parent,
    generated_tasks("json_schema", generator.draw),
    ("json_only", "json_schema_valid", "json_values"),
    generator.reference,
)
register_skill_eval_tasks(SKILL)
