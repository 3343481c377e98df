"""The public path ``guided_diffusion.samplers``: its names live in ``guided_diffusion.sampling.samplers``."""

from guided_diffusion.sampling.samplers import *  # noqa: F401,F403
