"""Skills, one folder each (S2L: a skill document turned into training data and a held-out eval).

A skill folder holds its `SKILL.md` (the standard agent-skill format), `generator.py` (its seeded task
inputs and the reference output of each), `checks.py` (the rules that decide whether an output follows
the skill), `__init__.py` (registers it in skillweave.skill.SKILLS) and two lm-eval task YAMLs with their
loader/scorer `eval_set.py`: `skillweave_skill_<name>` (the held-out tasks without the skill text) and
`skillweave_skill_<name>_in_context` (with the whole SKILL.md in the prompt). A skill folder elsewhere is
loaded with skillweave.skill.load_skill_dir. A skill imports no other skill: a composed skill reuses the
others' checks by their registered rule names.
"""
