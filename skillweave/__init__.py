"""skillweave: a shared backbone plus compressed per-domain skillpacks (SkillWeave, arXiv 2605.22205)."""

__version__ = "0.1.0"
