"""Delivery on Celery (DESIGN §7, ``delivery="celery"``): one task per submission.

The web process only enqueues ``klaviyo_middleware.deliver`` with the
submission (never the API key); workers hold the key and send the steps.
Nothing is lost when a worker dies: tasks are acknowledged late and
rejected back to the queue when the worker is lost, and with Redis an
unacknowledged task returns after ``visibility_timeout``. A re-delivered
task reads the submission's progress from Redis and skips every step Klaviyo
already accepted.

Workers are configured from the environment (or ``app.conf``):
``KLAVIYO_PRIVATE_API_KEY``, ``KLAVIYO_API_URL``, ``KLAVIYO_REVISION`` and
``KLAVIYO_STATE_URL`` (the Redis that holds progress, the shared rate
limiter and dead letters; default: the broker when it is Redis).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery, Task

from . import steps
from .client import DEFAULT_API_URL, DEFAULT_REVISION, KlaviyoClient, KlaviyoError
from .config import ENV_API_KEY, ENV_API_URL, ENV_REVISION, ConfigurationError
from .ratelimits import ENDPOINT_LIMITS, Limits, endpoint_for, scaled
from .redact import get_logger
from .redis_state import RedisState
from .retry import RetryPolicy
from .spool import account_fingerprint
from .submission import Submission

log = get_logger(__name__)

TASK_NAME = "klaviyo_middleware.deliver"
QUEUE = "klaviyo"
ENV_BROKER_URL = "KLAVIYO_BROKER_URL"
ENV_STATE_URL = "KLAVIYO_STATE_URL"
# Longer than any backoff countdown (Redis re-delivers a reserved task once
# this passes), short enough that a dead worker's tasks come back soon.
DEFAULT_VISIBILITY_TIMEOUT = 3600
# Rate-limit waits up to this long happen in the worker; longer ones retry later.
_SHORT_WAIT = 2.0


def configure(app: Celery, visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT) -> None:
    """The settings that make delivery lose nothing; applied to any app we use."""
    transport = dict(app.conf.broker_transport_options or {})
    transport.setdefault("visibility_timeout", visibility_timeout)
    # Redis sweeps for tasks whose worker vanished every interval * throttle
    # seconds (100 by default); sweep on every interval, a fraction of the
    # visibility timeout, so they come back soon after it expires.
    transport.setdefault("unacked_restore_throttle", 1)
    transport.setdefault("unacked_restore_interval",
                         max(1, min(10, int(transport["visibility_timeout"]) // 5)))
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
    )


def make_celery(broker_url: str, visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT) -> Celery:
    app = Celery("klaviyo_middleware", broker=broker_url)
    configure(app, visibility_timeout)
    register(app)
    return app


def register(app: Celery) -> Task:
    """The delivery task on ``app`` (registered once), routed to our queue."""
    routes = dict(app.conf.task_routes or {})
    routes.setdefault(TASK_NAME, {"queue": QUEUE})
    app.conf.task_routes = routes
    if TASK_NAME in app.tasks:
        return app.tasks[TASK_NAME]
    task: Task = app.task(
        name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
        max_retries=None,
    )(_deliver)
    return task


@dataclass
class _Runtime:
    """What a worker process needs; built once per process, from its own config."""

    client: KlaviyoClient
    state: RedisState
    limits: dict[str, Limits]
    retry: RetryPolicy
    max_age: float


_runtimes: dict[tuple[int, int], _Runtime] = {}
_runtimes_lock = threading.Lock()


def runtime_for(app: Celery) -> _Runtime:
    key = (os.getpid(), id(app))
    with _runtimes_lock:
        if key not in _runtimes:
            _runtimes[key] = _build_runtime(app)
        return _runtimes[key]


def _setting(app: Celery, name: str, env: str, default: str | None = None) -> str | None:
    value = app.conf.get(name) or os.environ.get(env) or default
    return str(value) if value else None


def _build_runtime(app: Celery) -> _Runtime:
    api_key = _setting(app, "klaviyo_api_key", ENV_API_KEY)
    if not api_key:
        raise ConfigurationError(f"the Klaviyo worker needs {ENV_API_KEY}")
    api_url = (_setting(app, "klaviyo_api_url", ENV_API_URL, DEFAULT_API_URL) or "").rstrip("/")
    broker = str(app.conf.broker_url or "")
    state_url = _setting(app, "klaviyo_state_url", ENV_STATE_URL,
                         broker if broker.startswith(("redis://", "rediss://")) else None)
    if not state_url:
        raise ConfigurationError(f"set {ENV_STATE_URL} to a Redis URL for delivery state")
    share = float(app.conf.get("klaviyo_rate_limit_share") or 0.9)
    return _Runtime(
        client=KlaviyoClient(api_key, api_url=api_url, revision=_setting(
            app, "klaviyo_revision", ENV_REVISION, DEFAULT_REVISION) or DEFAULT_REVISION),
        state=RedisState(state_url, account_fingerprint(api_url, api_key)),
        limits={name: scaled(limits, share) for name, limits in ENDPOINT_LIMITS.items()},
        retry=RetryPolicy(base=1.0, cap=600.0),
        max_age=float(app.conf.get("klaviyo_retry_max_age") or 3 * 24 * 3600),
    )


def _deliver(task: Task, payload: dict[str, Any]) -> str:
    runtime = runtime_for(task.app)
    state = runtime.state
    submission = Submission.from_dict(payload)
    if state.is_finished(submission.id):
        return "already finished"
    progress = state.load_progress(submission.id)
    for step in steps.pending(submission, progress):
        _wait_for_capacity(task, runtime, endpoint_for(step))
        try:
            steps.run_step(runtime.client, submission, step, progress)
        except KlaviyoError as error:
            return _failed(task, runtime, submission, progress, error)
        state.save_progress(submission.id, progress)
    state.complete(submission.id)
    state.mark_finished(submission.id)
    return "delivered"


def _wait_for_capacity(task: Task, runtime: _Runtime, endpoint: str) -> None:
    while True:
        wait = runtime.state.paused_for() or runtime.state.take_rate_slot(
            endpoint, runtime.limits[endpoint])
        if wait <= 0:
            return
        if wait > _SHORT_WAIT:
            # Free the worker: the task comes back when capacity does.
            raise task.retry(countdown=wait, max_retries=None)
        time.sleep(wait)


def _failed(task: Task, runtime: _Runtime, submission: Submission,
            progress: steps.Progress, error: KlaviyoError) -> str:
    attempt = task.request.retries + 1
    if error.status == 429:
        runtime.state.pause(error.retry_after or runtime.retry.backoff(1))
    delay = runtime.retry.later(error, attempt, _age(submission), runtime.max_age)
    if delay is not None:
        runtime.state.save_progress(submission.id, progress)
        log.warning("klaviyo_middleware: submission %s will be retried in %.1fs: %s",
                    submission.id, delay, error)
        raise task.retry(countdown=delay, max_retries=None)
    log.error("klaviyo_middleware: submission %s dead-lettered: %s", submission.id, error)
    runtime.state.bury(submission, progress, error.to_dict(), attempt)
    runtime.state.mark_finished(submission.id)
    return "dead"


def _age(submission: Submission) -> float:
    try:
        return time.time() - datetime.fromisoformat(submission.submitted_at).timestamp()
    except ValueError:
        return 0.0
