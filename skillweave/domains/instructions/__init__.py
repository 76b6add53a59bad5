"""The instructions: IFEval-style requests, checked by lm-eval's own IFEval checkers.

Importing the package registers its prompt source (source.py), verifiers (verifiers.py) and eval tasks
(eval_set.py, with the lm-eval YAMLs beside it).
"""

from . import eval_set, source, verifiers  # noqa: F401  (registration)
