"""The public path ``guided_diffusion.edm``: its names live in ``guided_diffusion.networks.edm``."""

from guided_diffusion.networks.edm import *  # noqa: F401,F403
