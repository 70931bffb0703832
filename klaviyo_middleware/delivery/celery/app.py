"""The Celery app for ``celery -A klaviyo_middleware.delivery.celery.app worker -Q klaviyo``.

It reads ``KLAVIYO_BROKER_URL`` (plus the worker settings listed in
:mod:`klaviyo_middleware.delivery.celery.tasks`). Sites with a Celery app of their
own call :func:`klaviyo_middleware.delivery.celery.tasks.register` on it instead.
"""

from __future__ import annotations

import os

from klaviyo_middleware.delivery.celery.config import ENV_BROKER_URL
from klaviyo_middleware.delivery.celery.tasks import make_celery

app = make_celery(os.environ.get(ENV_BROKER_URL) or "redis://127.0.0.1:6379/0")
