"""What a Celery worker is configured with, from declared options.

The account's options (key, URL, revision, retry age, rate-limit share) are
the ones the middleware declares in :mod:`klaviyo_middleware.klaviyo.account`,
with the same checks and defaults; the worker's own options are declared
below. Each is read from the Celery app's config as ``klaviyo_<name>``, else
from its environment variable, else its default — the environment is how
``klaviyo-middleware worker`` hands them to its pool processes, and how the
API key stays out of the process list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from klaviyo_middleware import option
from klaviyo_middleware.delivery.retention import DEAD_LETTER_MAX_AGE
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.account import (
    API_KEY,
    API_URL,
    RATE_LIMIT_SHARE,
    RETRY_MAX_AGE,
    REVISION,
)
from klaviyo_middleware.option import Option

ENV_BROKER_URL = "KLAVIYO_BROKER_URL"
ENV_STATE_URL = "KLAVIYO_STATE_URL"
ENV_BULK_THRESHOLD = "KLAVIYO_BULK_THRESHOLD"
ENV_BULK_SIZE = "KLAVIYO_BULK_SIZE"
ENV_POOL_LEASE = "KLAVIYO_POOL_LEASE"

STATE_URL: Option[str | None] = Option(
    "state_url", None, option.optional_text, env=ENV_STATE_URL,
    help="the Redis that holds progress, the shared rate limiter, the pool and "
         "dead letters; default: the broker when it is Redis.")
BULK_THRESHOLD: Option[int] = Option(
    "bulk_threshold", 20, option.count, option.as_int, env=ENV_BULK_THRESHOLD,
    help="tasks waiting in the queue from which submissions go through the bulk "
         "endpoints (0 turns batching off).")
BULK_SIZE: Option[int] = Option(
    "bulk_size", 1000, option.positive_int, option.as_int, env=ENV_BULK_SIZE,
    help="submissions in one bulk round (Klaviyo takes up to 1,000 per call).")
POOL_LEASE: Option[float] = Option(
    "pool_lease", 60.0, option.seconds, option.as_float, env=ENV_POOL_LEASE,
    help="seconds a drain holds pooled submissions before another may take them over.")

WORKER_OPTIONS: tuple[Option[Any], ...] = (
    API_KEY, API_URL, REVISION, RETRY_MAX_AGE, RATE_LIMIT_SHARE, DEAD_LETTER_MAX_AGE,
    STATE_URL, BULK_THRESHOLD, BULK_SIZE, POOL_LEASE,
)


@dataclass(frozen=True)
class WorkerConfig:
    """Every option of :data:`WORKER_OPTIONS`, checked: one field each."""

    api_key: str
    api_url: str
    revision: str
    retry_max_age: float
    rate_limit_share: float
    dead_letter_max_age: float
    state_url: str
    bulk_threshold: int
    bulk_size: int
    pool_lease: float

    def __repr__(self) -> str:  # never show the key
        return f"<WorkerConfig api_url={self.api_url!r}>"


def read_config(conf: Mapping[str, Any], broker_url: str,
                environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Check a worker's options at its start: a public key or a pasted space
    fails here, not at the first call."""
    env = os.environ if environ is None else environ
    values = {declared.name: declared.read(conf.get(f"klaviyo_{declared.name}"), env)
              for declared in WORKER_OPTIONS}
    if not values["state_url"]:
        if not broker_url.startswith(("redis://", "rediss://")):
            raise ConfigurationError(f"set {ENV_STATE_URL} to a Redis URL for delivery state")
        values["state_url"] = broker_url
    return WorkerConfig(**values)
