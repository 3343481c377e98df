"""The public path ``guided_diffusion.phema``: its names live in ``guided_diffusion.training.phema``."""

from guided_diffusion.training.phema import *  # noqa: F401,F403
