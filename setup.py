"""Shim for tools that still call setup.py; the project is configured in pyproject.toml."""

from setuptools import setup

setup()
