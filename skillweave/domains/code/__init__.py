"""The code: function-writing tasks (tasks.jsonl, HumanEval's shape, split stored in the data) whose unit
tests run in the sandbox.

Importing the package registers its prompt source (source.py), verifiers (verifiers.py) and eval tasks
(eval_set.py, with the lm-eval YAMLs beside it).
"""

from . import eval_set, source, verifiers  # noqa: F401  (registration)
