"""The Celery app for ``celery -A klaviyo_middleware.celery_worker worker -Q klaviyo``.

It reads ``KLAVIYO_BROKER_URL`` (plus the worker settings listed in
:mod:`klaviyo_middleware.celery_tasks`). Sites with a Celery app of their
own call :func:`klaviyo_middleware.celery_tasks.register` on it instead.
"""

from __future__ import annotations

import os

from .celery_tasks import ENV_BROKER_URL, make_celery

app = make_celery(os.environ.get(ENV_BROKER_URL) or "redis://127.0.0.1:6379/0")
