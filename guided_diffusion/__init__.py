"""guided_diffusion: ADM diffusion models (Dhariwal & Nichol 2021), their training, sampling and guidance.

Importing the package changes no environment variable and no global torch setting.
"""

__version__ = "0.2.0"
