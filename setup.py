"""For tools that still run setup.py (python setup.py develop): everything is configured in pyproject.toml."""

import sys

import setuptools

if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject.toml's SPDX license string (PEP 639)
    sys.exit(f"setup.py: error: needs setuptools >= 77, found {setuptools.__version__}: pip install -U setuptools")

setuptools.setup()
