"""The errors a user can fix: one base class, so the CLI prints them as one line and nothing else.

Anything that is not a `SkillweaveError` is a bug and keeps its traceback. Each subclass also derives
from the builtin it refines (`ValueError`, `KeyError`, ...), so `except ValueError` callers and tests
written against the builtins keep working.
"""

from __future__ import annotations


class SkillweaveError(Exception):
    """A problem with the user's input or environment; the message names the setting and the fix."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(SkillweaveError, ValueError):
    """A setting that is out of range, inconsistent with another, or names nothing that exists."""


class UnknownChoice(SkillweaveError, KeyError):
    """A name looked up in a registry (stage, rule, merge method, eval configuration...) that is not there."""


class MissingArtifactError(SkillweaveError, RuntimeError):
    """An input artifact that no earlier run produced; the message names the command that does."""


class ArtifactError(SkillweaveError, ValueError):
    """An artifact on disk that is damaged or does not belong to this run; the message says how to redo it."""


class ModelError(SkillweaveError, ValueError):
    """A model directory that cannot be used: missing, unreadable or of an unsupported kind."""


class SkillpackError(ArtifactError):
    """A skillpack file that is unreadable, of another version, or made for another backbone."""


class DataError(SkillweaveError, ValueError):
    """Data a stage cannot work with: a prompt source that runs dry, no pairs, no prompts."""
