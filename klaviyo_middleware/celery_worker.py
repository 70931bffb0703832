"""Deprecated ``celery -A`` target: use ``klaviyo_middleware.delivery.celery.app``."""

from __future__ import annotations

import warnings

from klaviyo_middleware.delivery.celery.app import app

__all__ = ["app"]

warnings.warn(
    "celery -A klaviyo_middleware.celery_worker: use klaviyo_middleware.delivery.celery.app",
    DeprecationWarning,
    stacklevel=2,
)
