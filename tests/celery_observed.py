"""A site's Celery module with delivery observers, for ``celery -A celery_observed``.

Each observer pushes what it saw onto a Redis list the test reads.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis

from klaviyo_middleware.delivery.celery.tasks import make_celery, register

app = make_celery(os.environ["KLAVIYO_BROKER_URL"])
_seen = redis.Redis.from_url(os.environ["KLAVIYO_STATE_URL"])


def _record(kind: str, submission: Any, *details: Any) -> None:
    _seen.rpush("observed", json.dumps([kind, submission.profile.get("email"),
                                        *[str(detail) for detail in details]]))


register(
    app,
    on_delivered=lambda submission: _record("delivered", submission),
    on_retry=lambda submission, error, delay: _record("retry", submission, error.status),
    on_dead=lambda submission, error: _record("dead", submission, error.status),
)
