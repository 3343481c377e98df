"""The public path ``guided_diffusion.attention``: its names live in ``guided_diffusion.networks.attention``."""

from guided_diffusion.networks.attention import *  # noqa: F401,F403
