"""Integrations with frameworks and tools, each importing its own (optional) dependency:
``contrib.django``, ``contrib.flask``, ``contrib.prometheus``."""

from __future__ import annotations


def missing_extra(exc: ModuleNotFoundError, extra: str) -> ModuleNotFoundError:
    """The error to raise when an integration's framework is not installed:
    one line naming the extra that brings it (a bare ``No module named
    'flask'`` leaves the reader to guess)."""
    return ModuleNotFoundError(
        f"klaviyo_middleware.contrib.{extra} needs {exc.name}: "
        f'pip install "klaviyo_middleware[{extra}]" (from a checkout: '
        f"pip install '.[{extra}]')", name=exc.name)
