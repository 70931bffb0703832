"""Deprecated import path: use :mod:`klaviyo_middleware.delivery.celery.tasks`.

Kept so that workers and sites written against 0.1 (``register``,
``configure``, ``make_celery`` from here) keep working.
"""

from __future__ import annotations

import warnings

from klaviyo_middleware.delivery.celery.tasks import *  # noqa: F403
from klaviyo_middleware.delivery.celery.tasks import configure, make_celery, register

__all__ = ["configure", "make_celery", "register"]

warnings.warn(
    "klaviyo_middleware.celery_tasks moved to klaviyo_middleware.delivery.celery.tasks",
    DeprecationWarning,
    stacklevel=2,
)
