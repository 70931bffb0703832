"""Errors every layer may raise; they import nothing of the package."""

from __future__ import annotations


class ConfigurationError(ValueError):
    """The middleware was configured in a way that cannot work (raised at
    start-up, never at a visitor's request)."""
