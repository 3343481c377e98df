"""The public path ``guided_diffusion.edm2``: its names live in ``guided_diffusion.networks.edm2``."""

from guided_diffusion.networks.edm2 import *  # noqa: F401,F403
