"""Delivery on Celery (``delivery="celery"``, design.md §1): one task per submission.

The web process only enqueues ``klaviyo_middleware.deliver`` with the
submission (never the API key); workers hold the key and send the steps.
Nothing is lost when a worker dies: tasks are acknowledged late and
rejected back to the queue when the worker is lost, and with Redis an
unacknowledged task returns after ``visibility_timeout``. A re-delivered
task reads the submission's progress from Redis and skips every step Klaviyo
already accepted.

When the queue backs up (``klaviyo_bulk_threshold`` tasks waiting, 20 by
default), a task moves its submission into the Redis pool
(:mod:`klaviyo_middleware.delivery.celery.pool`) instead of calling Klaviyo, and a
``klaviyo_middleware.drain`` task sends the pool through the bulk endpoints
in rounds of up to ``klaviyo_bulk_size`` (1,000) — a few dozen calls for ten
thousand submissions instead of thirty thousand.

Workers are configured from the environment (or ``app.conf``):
``KLAVIYO_PRIVATE_API_KEY``, ``KLAVIYO_API_URL``, ``KLAVIYO_REVISION`` and
``KLAVIYO_STATE_URL`` (the Redis that holds progress, the shared rate
limiter, the pool and dead letters; default: the broker when it is Redis);
``KLAVIYO_BULK_THRESHOLD`` (0 turns batching off), ``KLAVIYO_BULK_SIZE`` and
``KLAVIYO_POOL_LEASE`` (seconds a drain holds pooled submissions before
another may take them over).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery, Task, signals

from klaviyo_middleware.delivery.celery.ledger import Ledger, wants_ledger
from klaviyo_middleware.delivery.celery.pool import RedisPool
from klaviyo_middleware.delivery.celery.state import RedisState
from klaviyo_middleware.delivery.courier import Courier
from klaviyo_middleware.delivery.hooks import Hooks, OnDead, OnDelivered, OnRetry
from klaviyo_middleware.delivery.spool.store import account_fingerprint, new_owner
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo import steps
from klaviyo_middleware.klaviyo.account import (
    DEFAULT_RATE_LIMIT_SHARE,
    DEFAULT_RETRY_MAX_AGE,
    RETRY_BASE,
    RETRY_CAP,
    check_api_key,
    check_api_url,
    check_revision,
)
from klaviyo_middleware.klaviyo.client import (
    DEFAULT_API_URL,
    DEFAULT_REVISION,
    ENV_API_KEY,
    ENV_API_URL,
    ENV_REVISION,
    KlaviyoClient,
    KlaviyoError,
)
from klaviyo_middleware.klaviyo.limits import ENDPOINT_LIMITS, RateLimits, endpoint_for, scaled
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

TASK_NAME = "klaviyo_middleware.deliver"
DRAIN_TASK_NAME = "klaviyo_middleware.drain"
QUEUE = "klaviyo"
ENV_BROKER_URL = "KLAVIYO_BROKER_URL"
ENV_STATE_URL = "KLAVIYO_STATE_URL"
ENV_BULK_THRESHOLD = "KLAVIYO_BULK_THRESHOLD"
ENV_BULK_SIZE = "KLAVIYO_BULK_SIZE"
ENV_POOL_LEASE = "KLAVIYO_POOL_LEASE"
# Longer than any backoff countdown (Redis re-delivers a reserved task once
# this passes), short enough that a dead worker's tasks come back soon.
DEFAULT_VISIBILITY_TIMEOUT = 3600
# Rate-limit waits up to this long happen in the worker; longer ones retry later.
_SHORT_WAIT = 2.0
# A drain hands its worker back after this long and enqueues its successor,
# so that a long backlog never holds one worker slot (or one lease) for hours.
_DRAIN_BUDGET = 30.0
# A drain also takes what falls due within this many seconds, so that
# submissions retried together are sent together.
_GATHER = 1.0
# How long a measured queue length is trusted: one broker round trip a
# second per worker process, not one per task.
_BACKLOG_TTL = 1.0


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


def register(
    app: Celery,
    on_delivered: OnDelivered | Iterable[OnDelivered] | None = None,
    on_retry: OnRetry | Iterable[OnRetry] | None = None,
    on_dead: OnDead | Iterable[OnDead] | None = None,
) -> Task:
    """The delivery tasks on ``app`` (registered once), routed to our queue.

    The observers run in the worker processes, where delivery happens, so
    pass them here, in the module the workers load (``celery -A``); the
    middleware on the web nodes never sees a delivery. A later call with
    observers replaces the earlier ones.
    """
    if on_delivered or on_retry or on_dead:
        _observers[app] = Hooks(on_delivered=on_delivered, on_retry=on_retry, on_dead=on_dead)
    routes = dict(app.conf.task_routes or {})
    routes.setdefault(TASK_NAME, {"queue": QUEUE})
    routes.setdefault(DRAIN_TASK_NAME, {"queue": QUEUE})
    app.conf.task_routes = routes
    for name, function in ((DRAIN_TASK_NAME, _drain), (TASK_NAME, _deliver)):
        if name not in app.tasks:
            # Any other exception would fail the task, and Celery acknowledges
            # (drops) a failed task even with acks_late: retry instead (Redis
            # unreachable, a bug); backoff with jitter up to ten minutes.
            app.task(name=name, bind=True, acks_late=True, reject_on_worker_lost=True,
                     max_retries=None, autoretry_for=(Exception,), retry_backoff=True,
                     retry_backoff_max=600, retry_jitter=True)(function)
    task: Task = app.tasks[TASK_NAME]
    return task


@dataclass
class _Runtime:
    """What a worker process needs; built once per process, from its own config."""

    client: KlaviyoClient
    state: RedisState
    limits: dict[str, RateLimits]
    retry: RetryPolicy
    max_age: float
    pool: RedisPool
    bulk_threshold: int
    bulk_size: int
    lease: float
    backlog: _BacklogGauge
    ledger: Ledger | None
    quiet_for: float


_observers: weakref.WeakKeyDictionary[Celery, Hooks] = weakref.WeakKeyDictionary()
_runtimes: dict[tuple[int, int], _Runtime] = {}
_runtimes_lock = threading.Lock()


def runtime_for(app: Celery) -> _Runtime:
    key = (os.getpid(), id(app))
    with _runtimes_lock:
        if key not in _runtimes:
            _runtimes[key] = _build_runtime(app)
        return _runtimes[key]


def observers(app: Celery) -> Hooks:
    return _observers.get(app) or Hooks()


def _setting(app: Celery, name: str, env: str, default: str | None = None) -> str | None:
    value = app.conf.get(name) or os.environ.get(env) or default
    return str(value) if value else None


def _build_runtime(app: Celery) -> _Runtime:
    # The middleware's own checks: a public key or a pasted space fails here,
    # at the worker's start, not at its first call.
    api_key = check_api_key(_setting(app, "klaviyo_api_key", ENV_API_KEY))
    api_url = check_api_url(_setting(app, "klaviyo_api_url", ENV_API_URL, DEFAULT_API_URL)
                            or DEFAULT_API_URL)
    revision = check_revision(_setting(app, "klaviyo_revision", ENV_REVISION, DEFAULT_REVISION)
                              or DEFAULT_REVISION)
    broker = str(app.conf.broker_url or "")
    state_url = _setting(app, "klaviyo_state_url", ENV_STATE_URL,
                         broker if broker.startswith(("redis://", "rediss://")) else None)
    if not state_url:
        raise ConfigurationError(f"set {ENV_STATE_URL} to a Redis URL for delivery state")
    share = float(app.conf.get("klaviyo_rate_limit_share") or DEFAULT_RATE_LIMIT_SHARE)
    state = RedisState(state_url, account_fingerprint(api_url, api_key))
    return _Runtime(
        client=KlaviyoClient(api_key, api_url=api_url, revision=revision),
        state=state,
        limits={name: scaled(limits, share) for name, limits in ENDPOINT_LIMITS.items()},
        retry=RetryPolicy(base=RETRY_BASE, cap=RETRY_CAP),
        max_age=float(app.conf.get("klaviyo_retry_max_age") or DEFAULT_RETRY_MAX_AGE),
        pool=RedisPool(state),
        bulk_threshold=_number(app, "klaviyo_bulk_threshold", ENV_BULK_THRESHOLD, 20),
        bulk_size=max(1, _number(app, "klaviyo_bulk_size", ENV_BULK_SIZE, 1000)),
        lease=float(_number(app, "klaviyo_pool_lease", ENV_POOL_LEASE, 60)),
        backlog=_BacklogGauge(app),
        ledger=Ledger(broker) if wants_ledger(broker) else None,
        # A task reserved by a vanished worker comes back after the
        # visibility timeout; a ledger entry quiet for as long is lost.
        quiet_for=float((app.conf.broker_transport_options or {}).get(
            "visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)),
    )


def _number(app: Celery, name: str, env: str, default: int) -> int:
    value = _setting(app, name, env)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name} / {env} must be a whole number, not {value!r}") from None
    if number < 0:
        raise ConfigurationError(f"{name} / {env} must not be negative")
    return number


class _BacklogGauge:
    """How many tasks wait in our queue, asked of the broker at most once a second.

    A passive ``queue_declare`` reports the ready messages on RabbitMQ and
    the list length on Redis alike; tasks reserved by workers are not counted.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._measured_at = -_BACKLOG_TTL
        self._length = 0

    def waiting(self) -> int:
        with self._lock:
            now = time.monotonic()
            if now - self._measured_at >= _BACKLOG_TTL:
                self._length = self._measure()
                self._measured_at = now
            return self._length

    def _measure(self) -> int:
        try:
            with self.app.connection_for_read() as connection:
                declared = connection.default_channel.queue_declare(queue=QUEUE, passive=True)
                return int(declared.message_count)
        except Exception as exc:
            # Not knowing means sending singly, which is always correct.
            log.warning("klaviyo_middleware: could not measure the queue: %s", exc)
            return 0


def _deliver(task: Task, payload: dict[str, Any]) -> str:
    runtime = runtime_for(task.app)
    state = runtime.state
    submission = Submission.from_dict(payload)
    if state.is_finished(submission.id):
        _settle(runtime, submission.id)
        return "already finished"
    _alive(runtime, submission.id)
    progress = state.load_progress(submission.id)
    if runtime.pool.holds(submission.id) or _backlogged(runtime):
        # The drain delivers it with the rest; the broker may acknowledge this
        # task once the pool has the submission (and a drain is on its way).
        runtime.pool.add(submission, progress, task.request.retries, _created_at(submission))
        schedule_drain(task.app, runtime.pool)
        _settle(runtime, submission.id)
        return "pooled"
    for step in steps.pending(submission, progress):
        _wait_for_capacity(task, runtime, submission, endpoint_for(step))
        try:
            steps.run_step(runtime.client, submission, step, progress)
        except KlaviyoError as error:
            return _failed(task, runtime, submission, progress, error)
        state.save_progress(submission.id, progress)
        _alive(runtime, submission.id)
    state.complete(submission.id)
    state.mark_finished(submission.id)
    _settle(runtime, submission.id)
    observers(task.app).delivered(submission)
    return "delivered"


def _alive(runtime: _Runtime, submission_id: str, until: float | None = None) -> None:
    if runtime.ledger is not None:
        runtime.ledger.alive(submission_id, until)


def _settle(runtime: _Runtime, submission_id: str) -> None:
    if runtime.ledger is not None:
        runtime.ledger.settle(submission_id)


def _wait_for_capacity(task: Task, runtime: _Runtime, submission: Submission,
                       endpoint: str) -> None:
    while True:
        wait = runtime.state.paused_for() or runtime.state.take_rate_slot(
            endpoint, runtime.limits[endpoint])
        if wait <= 0:
            return
        if wait > _SHORT_WAIT:
            # Free the worker: the task comes back when capacity does.
            _alive(runtime, submission.id, time.time() + wait)
            raise task.retry(countdown=wait, max_retries=None)
        time.sleep(wait)


def _failed(task: Task, runtime: _Runtime, submission: Submission,
            progress: Progress, error: KlaviyoError) -> str:
    attempt = task.request.retries + 1
    if error.status == 429:
        runtime.state.pause(error.retry_after or runtime.retry.backoff(1))
    delay = runtime.retry.later(error, attempt, _age(submission), runtime.max_age)
    if delay is not None:
        runtime.state.save_progress(submission.id, progress)
        log.warning("klaviyo_middleware: submission %s will be retried in %.1fs: %s",
                    submission.id, delay, error)
        # Enqueue the retry, tell the observers, then end this run with it.
        _alive(runtime, submission.id, time.time() + delay)
        retry = task.retry(countdown=delay, max_retries=None, throw=False)
        observers(task.app).retrying(submission, error, delay)
        raise retry
    log.error("klaviyo_middleware: submission %s dead-lettered: %s", submission.id, error)
    runtime.state.bury(submission, progress, error.to_dict(), attempt)
    runtime.state.mark_finished(submission.id)
    _settle(runtime, submission.id)
    observers(task.app).dead(submission, error)
    return "dead"


def _backlogged(runtime: _Runtime) -> bool:
    threshold = runtime.bulk_threshold
    return threshold > 0 and runtime.backlog.waiting() >= threshold


def schedule_drain(app: Celery, pool: RedisPool, countdown: float = 0.0) -> None:
    """Make sure a drain will run (at most one is enqueued at a time)."""
    if pool.want_drain(countdown):
        try:
            app.send_task(DRAIN_TASK_NAME, queue=QUEUE, countdown=countdown or None)
        except Exception:
            # Let the next submission (or this task's retry) enqueue it.
            pool.drain_started()
            raise


def _drain(task: Task) -> str:
    """Send the pool through the bulk endpoints for up to ``_DRAIN_BUDGET`` seconds.

    While the pool holds anything, a drain is queued, running or counting
    down: this one clears the flag as it starts (a submission pooled from now
    on enqueues a successor, or is seen below) and, if work is left when it
    stops, enqueues its successor for when the next submission falls due.
    """
    runtime = runtime_for(task.app)
    pool = runtime.pool
    pool.drain_started()
    courier = Courier(pool, runtime.client, new_owner(), limits=runtime.limits,
                      retry=runtime.retry, lease=runtime.lease, max_age=runtime.max_age,
                      hooks=observers(task.app))
    deadline = time.monotonic() + _DRAIN_BUDGET
    sent = 0
    while time.monotonic() < deadline and pool.paused_for() <= 0:
        claimed = pool.claim(courier.owner, runtime.bulk_size, runtime.lease, _GATHER)
        if not claimed:
            break
        # A few stragglers go one call per step: a bulk job is slower to land.
        threshold = runtime.bulk_threshold
        courier.deliver_round(claimed, use_bulk=threshold > 0 and len(claimed) >= threshold)
        sent += len(claimed)
    _drain_what_is_left(task.app, pool)
    return f"drained {sent}"


def _drain_what_is_left(app: Celery, pool: RedisPool) -> None:
    """A drain for when the pool's next submission falls due and no pause holds it."""
    wait = pool.next_due_in()
    if wait is not None:
        paused = pool.paused_for()
        schedule_drain(app, pool, max(wait, paused))


def sweep(app: Celery) -> int:
    """Recover what a vanished worker took with it; the number re-enqueued.

    Run by every worker every few seconds (one at a time fleet-wide), and
    only while the queue is empty, so that nothing merely waiting its turn
    is taken for lost: ledger entries quiet for longer than the visibility
    timeout are enqueued again, and a pool with no drain due gets one.
    """
    runtime = runtime_for(app)
    ledger = runtime.ledger
    if ledger is not None and not ledger.take_sweep_turn(_sweep_interval(runtime)):
        return 0
    if runtime.backlog.waiting() > 0:
        return 0
    resent = _resend_lost(app, runtime, ledger) if ledger is not None else 0
    _drain_what_is_left(app, runtime.pool)
    return resent


def _resend_lost(app: Celery, runtime: _Runtime, ledger: Ledger) -> int:
    resent = 0
    for payload in ledger.stale(runtime.quiet_for):
        submission_id = str(payload.get("id", ""))
        if runtime.state.is_finished(submission_id) or runtime.pool.holds(submission_id):
            ledger.settle(submission_id)
            continue
        log.warning("klaviyo_middleware: re-enqueueing %s, lost with a worker", submission_id)
        app.send_task(TASK_NAME, args=[payload], queue=QUEUE)
        ledger.alive(submission_id)
        resent += 1
    return resent


def _sweep_interval(runtime: _Runtime) -> float:
    return max(1.0, min(60.0, runtime.quiet_for / 5))


def _sweep_forever(app: Celery) -> None:
    interval = _sweep_interval(runtime_for(app))
    while True:
        time.sleep(interval)
        try:
            sweep(app)
        except Exception:
            # Redis or the broker away for a moment: the next sweep tries again.
            log.exception("klaviyo_middleware: ledger sweep failed")


def _start_sweeper(sender: Any = None, **_: Any) -> None:
    """Each worker's main process sweeps in a thread of its own."""
    app = getattr(sender, "app", None)
    if app is None or TASK_NAME not in app.tasks:
        return
    try:
        runtime_for(app)
    except ConfigurationError as exc:
        log.error("klaviyo_middleware: no ledger sweeper: %s", exc)
        return
    threading.Thread(target=_sweep_forever, args=(app,), name="klaviyo-sweeper",
                     daemon=True).start()


signals.worker_ready.connect(_start_sweeper)


def _created_at(submission: Submission) -> float:
    try:
        return datetime.fromisoformat(submission.submitted_at).timestamp()
    except ValueError:
        return time.time()


def _age(submission: Submission) -> float:
    return time.time() - _created_at(submission)
