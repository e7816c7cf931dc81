# The project's metadata lives in pyproject.toml; this file lets older tools install it.
from setuptools import setup

setup()
