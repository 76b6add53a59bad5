"""The pipeline's stages, one file each; importing this package registers them in STAGES."""

from . import dpo, eval, filter, generate, merge, zip  # noqa: F401
