"""The pipeline's stages, one file each; importing this package registers them in STAGES."""

from . import dpo, dpo_multitask, eval, filter, generate, lora, merge, zip  # noqa: F401
from . import dev, route  # noqa: F401
