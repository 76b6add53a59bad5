"""The dialogue: open requests scored by loose rules (length, no repetition loop, no refusal, on topic).

Importing the package registers its prompt source (source.py), verifiers (verifiers.py) and eval tasks
(eval_set.py, with the lm-eval YAMLs beside it).
"""

from . import eval_set, source, verifiers  # noqa: F401  (registration)
