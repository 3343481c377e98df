"""For tools that still run setup.py (python setup.py develop): everything is configured in pyproject.toml."""

from setuptools import setup

setup()
