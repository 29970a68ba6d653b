"""The package version, in one place (pyproject reads it; importing it is free)."""

__version__ = "0.1.0"
