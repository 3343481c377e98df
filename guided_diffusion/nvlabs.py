"""The public path ``guided_diffusion.nvlabs``: its names live in ``guided_diffusion.loading.nvlabs``."""

from guided_diffusion.loading.nvlabs import *  # noqa: F401,F403
