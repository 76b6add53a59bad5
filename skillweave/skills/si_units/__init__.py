"""si_units: a quantity converted to the SI unit asked for, rounded as asked and written SI style ("5.63 km")."""

from pathlib import Path

from skillweave.skill import generated_tasks, register_skill, register_skill_eval_tasks

from . import checks, generator  # noqa: F401  (checks registers the rules)

SKILL = register_skill(
    Path(__file__).parent, generated_tasks("si_units", generator.draw), ("si_value", "si_format"), generator.reference
)
register_skill_eval_tasks(SKILL)
