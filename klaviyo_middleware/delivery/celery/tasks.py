"""Delivery on Celery (``delivery="celery"``, design.md §1): one task per submission.

The web process only enqueues ``klaviyo_middleware.deliver`` with the
submission (never the API key); workers hold the key and send the steps.
Nothing is lost when a worker dies: tasks are acknowledged late and
rejected back to the queue when the worker is lost, and with Redis an
unacknowledged task returns after ``visibility_timeout``. A re-delivered
task reads the submission's progress from Redis and skips every step Klaviyo
already accepted.

Delivery keeps the spool's cadence: at most one round starts a second for
the fleet (a Redis turn). A task that starts one delivers its submission at
once, with whatever the pool holds; one that arrives while a round is young,
or finds the queue backed up
(``klaviyo_bulk_threshold`` tasks waiting, 20 by default), moves its
submission into the Redis pool (:mod:`klaviyo_middleware.delivery.celery.pool`)
instead of calling Klaviyo, and a ``klaviyo_middleware.drain`` task sends the
pool at the next round, through the bulk endpoints when it holds more than
one, in rounds of up to ``klaviyo_bulk_size`` (1,000) — a few dozen calls
for ten thousand submissions instead of thirty thousand. A task that meets
Klaviyo failing pools its submission too: the drains probe Klaviyo and its
first answer brings the pool forward (as the spool's senders do).

Workers are configured from ``app.conf`` (``klaviyo_<name>``) or the
environment: ``KLAVIYO_PRIVATE_API_KEY``, ``KLAVIYO_API_URL``,
``KLAVIYO_REVISION``, ``KLAVIYO_STATE_URL``, ``KLAVIYO_BULK_THRESHOLD``,
``KLAVIYO_BULK_SIZE``, ``KLAVIYO_POOL_LEASE`` — the options declared in
:mod:`klaviyo_middleware.delivery.celery.config`.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from celery import Celery, Task, signals

from klaviyo_middleware.delivery.celery.config import read_config
from klaviyo_middleware.delivery.celery.ledger import Ledger, wants_ledger
from klaviyo_middleware.delivery.celery.pool import RedisPool
from klaviyo_middleware.delivery.celery.single import TaskLease
from klaviyo_middleware.delivery.celery.state import RedisState
from klaviyo_middleware.delivery.courier import (
    KEY_RECHECK,
    PROBE_INTERVAL,
    ROUND_INTERVAL,
    Courier,
    Postponed,
)
from klaviyo_middleware.delivery.hooks import Hooks, OnDead, OnDelivered, OnRetry
from klaviyo_middleware.delivery.identities import account_fingerprint, new_owner
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.account import RETRY_BASE, RETRY_CAP
from klaviyo_middleware.klaviyo.client import KlaviyoClient
from klaviyo_middleware.klaviyo.limits import ENDPOINT_LIMITS, RateLimits, scaled
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

TASK_NAME = "klaviyo_middleware.deliver"
DRAIN_TASK_NAME = "klaviyo_middleware.drain"
QUEUE = "klaviyo"
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
# A probe takes the earliest pooled submission, however far off it is due.
_EVERYTHING = 10 * 365 * 86400.0
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
    dead_letter_max_age: float
    pool: RedisPool
    bulk_threshold: int
    bulk_size: int
    lease: float
    backlog: _BacklogGauge
    ledger: Ledger | None
    quiet_for: float

    @property
    def batching(self) -> bool:
        """Rounds and the pool are on (``klaviyo_bulk_threshold`` 0 turns
        them off: every submission goes on its own)."""
        return self.bulk_threshold > 0


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


def _build_runtime(app: Celery) -> _Runtime:
    broker = str(app.conf.broker_url or "")
    config = read_config(app.conf, broker)
    state = RedisState(config.state_url, account_fingerprint(config.api_url, config.api_key))
    return _Runtime(
        client=KlaviyoClient(config.api_key, api_url=config.api_url, revision=config.revision),
        state=state,
        limits={name: scaled(limits, config.rate_limit_share)
                for name, limits in ENDPOINT_LIMITS.items()},
        retry=RetryPolicy(base=RETRY_BASE, cap=RETRY_CAP),
        max_age=config.retry_max_age,
        dead_letter_max_age=config.dead_letter_max_age,
        pool=RedisPool(state, hand_back=partial(_hand_back, app, state)),
        bulk_threshold=config.bulk_threshold,
        bulk_size=config.bulk_size,
        lease=config.pool_lease,
        backlog=_BacklogGauge(app),
        ledger=Ledger(broker) if wants_ledger(broker) else None,
        # A task reserved by a vanished worker comes back after the
        # visibility timeout; a ledger entry quiet for as long is lost.
        quiet_for=float((app.conf.broker_transport_options or {}).get(
            "visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)),
    )


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
            if "NOT_FOUND" in str(exc):
                # Redis keeps no list for an empty queue, and kombu says
                # "no queue": nothing waits, which is no cause for a warning.
                return 0
            # Not knowing means sending singly, which is always correct.
            log.warning("klaviyo_middleware: could not measure the queue: %s", exc)
            return 0


def _deliver(task: Task, payload: dict[str, Any]) -> str:
    runtime = runtime_for(task.app)
    state = runtime.state
    submission = Submission.from_dict(payload)
    lease = TaskLease(task, state, runtime.ledger, runtime.pool)
    if state.is_finished(submission.id):
        lease.settle(submission.id)
        return "already finished"
    if state.key_refused():
        # Klaviyo refuses the key: the submission waits in the broker's queue
        # (the pool is the key's), where workers with the key put right find it.
        lease.alive(submission.id, time.time() + KEY_RECHECK)
        raise task.retry(countdown=KEY_RECHECK, max_retries=None)
    lease.alive(submission.id)
    progress = state.load_progress(submission.id)
    if runtime.pool.holds(submission.id) or _joins_a_round(runtime):
        # The drain delivers it with the rest; the broker may acknowledge this
        # task once the pool has the submission (and a drain is on its way).
        runtime.pool.add(submission, progress, task.request.retries, _created_at(submission))
        schedule_drain(task.app, runtime.pool, state.turn_free_in("round"))
        lease.settle(submission.id)
        return "pooled"
    if _pool_is_due(runtime):
        # This task started a round while the pool holds what arrived during
        # the last one: the round takes them all, as the spool's does. (The
        # drain counting down to this round can lose the turn to a task by
        # milliseconds; left alone, the pool would wait a round more.)
        runtime.pool.add(submission, progress, task.request.retries, _created_at(submission))
        lease.settle(submission.id)
        return _round_from_the_pool(task, runtime, submission.id)
    # The same courier as the spool's and the drain's, with one policy of its
    # own: a worker slot does not sit out a long pause or rate wait; the task
    # is retried when capacity returns (the broker keeps it meanwhile).
    courier = Courier(lease, runtime.client, str(task.request.id), limits=runtime.limits,
                      retry=runtime.retry, lease=runtime.lease, max_age=runtime.max_age,
                      hooks=observers(task.app), patience=_SHORT_WAIT)
    item = Leased(submission, progress, task.request.retries, _created_at(submission))
    try:
        courier.deliver(item)
    except Postponed as wait:
        lease.let_go(courier.owner, item)
        lease.alive(submission.id, time.time() + wait.seconds)
        raise task.retry(countdown=wait.seconds, max_retries=None) from None
    if lease.brought_forward:
        schedule_drain(task.app, runtime.pool)
    if lease.retry is not None:
        raise lease.retry
    if lease.outcome == "pooled":
        # Klaviyo failed: the drain probes it and sends what waits once it answers.
        schedule_drain(task.app, runtime.pool, PROBE_INTERVAL)
    return lease.outcome


def _joins_a_round(runtime: _Runtime) -> bool:
    """Whether a submission goes to the pool, to be sent with others in the
    next round, rather than alone now: the spool's cadence, fleet-wide. A
    round started less than :data:`ROUND_INTERVAL` ago (or the queue is backed
    up): what arrives meanwhile is sent together, in bulk, when the next
    starts. Otherwise this one starts a round of its own, one call a step."""
    if not runtime.batching:
        return False
    return (runtime.backlog.waiting() >= runtime.bulk_threshold
            or not runtime.state.take_turn("round", ROUND_INTERVAL))


def _pool_is_due(runtime: _Runtime) -> bool:
    """Whether pooled submissions wait for a round now (a drain would take
    them: due within :data:`_GATHER`, and no pause holds the account — a
    paused round is a drain's to wait out, not a task's)."""
    if not runtime.batching:
        return False
    wait = runtime.pool.next_due_in()
    return wait is not None and wait <= _GATHER and runtime.pool.paused_for() <= 0


def _round_from_the_pool(task: Task, runtime: _Runtime, submission_id: str) -> str:
    """Send one round from the pool, this task's submission in it; how that
    submission ended."""
    pool = runtime.pool
    try:
        _send_round(_pool_courier(task.app, runtime), runtime)
    finally:
        _drain_what_is_left(task.app, pool)
    if pool.holds(submission_id):
        return "pooled"
    return "dead" if runtime.state.is_dead(submission_id) else "delivered"


def _pool_courier(app: Celery, runtime: _Runtime) -> Courier:
    """A courier for what the pool holds: it waits out pauses in the worker
    slot, as a drain does (a task's own courier hands back instead)."""
    return Courier(runtime.pool, runtime.client, new_owner(), limits=runtime.limits,
                   retry=runtime.retry, lease=runtime.lease, max_age=runtime.max_age,
                   hooks=observers(app))


def _send_round(courier: Courier, runtime: _Runtime) -> int:
    """One round: everything due in the pool (up to ``bulk_size``), in bulk
    when more than one; the number sent."""
    claimed = runtime.pool.claim(courier.owner, runtime.bulk_size, runtime.lease, _GATHER)
    if claimed:
        # Alone, a submission goes one call per step: a bulk job is slower to land.
        courier.deliver_round(claimed, use_bulk=runtime.batching and len(claimed) > 1)
    return len(claimed)


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
    courier = _pool_courier(task.app, runtime)
    deadline = time.monotonic() + _DRAIN_BUDGET
    sent = 0
    while time.monotonic() < deadline and pool.paused_for() <= 0:
        wait = pool.next_due_in()
        if wait is None or wait > _GATHER:
            sent += _probe(courier, pool, runtime)
            break
        if runtime.batching and not runtime.state.take_turn("round", ROUND_INTERVAL):
            break  # a round started under a second ago: the successor takes the next
        sending = _send_round(courier, runtime)
        if not sending:
            break
        sent += sending
    _drain_what_is_left(task.app, pool)
    return f"drained {sent}"


def _probe(courier: Courier, pool: RedisPool, runtime: _Runtime) -> int:
    """While Klaviyo fails, what the outage put off waits out its backoff:
    the earliest asks whether Klaviyo answers again, one probe an interval
    for the fleet (as the spool's senders do)."""
    if (courier.outage_since is None
            or not runtime.state.take_turn("probe", PROBE_INTERVAL)):
        return 0
    claimed = pool.claim(courier.owner, 1, runtime.lease, _EVERYTHING)
    courier.deliver_round(claimed, use_bulk=False)
    return len(claimed)


def _drain_what_is_left(app: Celery, pool: RedisPool) -> None:
    """A drain for when the pool's next submission falls due (or the next
    round may start, or Klaviyo is to be probed) and no pause holds it."""
    wait = pool.next_due_in()
    if wait is None:
        return
    if pool.state.outage_since() is not None:
        wait = min(wait, PROBE_INTERVAL)
    schedule_drain(app, pool, max(wait, pool.paused_for(), pool.state.turn_free_in("round")))


def sweep(app: Celery) -> int:
    """Recover what a vanished worker took with it; the number re-enqueued.
    Expire old dead letters too.

    Run by every worker every few seconds (one at a time fleet-wide): ledger
    entries quiet for longer than the visibility timeout whose task is
    nowhere in the broker (neither queued nor reserved: see ledger.py) are
    enqueued again, busy queue or not; and, once the queue is empty, a pool
    with no drain due gets one.
    """
    runtime = runtime_for(app)
    ledger = runtime.ledger
    if ledger is not None and not ledger.take_sweep_turn(_sweep_interval(runtime)):
        return 0
    # Personal data no longer than needed, busy queue or not.
    runtime.state.expire_dead_letters(runtime.dead_letter_max_age)
    resent = _resend_lost(app, runtime, ledger) if ledger is not None else 0
    if runtime.backlog.waiting() == 0:
        _drain_what_is_left(app, runtime.pool)
    return resent


def _hand_back(app: Celery, state: RedisState, submission: Submission,
               progress: Progress) -> bool:
    """A pooled submission back on the queue, tried again after
    :data:`~klaviyo_middleware.delivery.courier.KEY_RECHECK`: what a refused
    key holds waits where any worker, whatever its key, will find it."""
    try:
        state.save_progress(submission.id, progress)
        app.send_task(TASK_NAME, args=[submission.to_dict()], queue=QUEUE,
                      task_id=submission.id, countdown=KEY_RECHECK)
    except Exception as exc:  # the broker away: it stays in the pool
        log.warning("klaviyo_middleware: could not hand %s back to the broker (%s); it "
                    "waits in the pool", submission.id, type(exc).__name__)
        return False
    return True


def _resend_lost(app: Celery, runtime: _Runtime, ledger: Ledger) -> int:
    resent = 0
    stale = ledger.stale(runtime.quiet_for)
    # Quiet but still queued or reserved: waiting its turn, not lost.
    present = ledger.in_broker(QUEUE, {str(payload.get("id", "")) for payload in stale})
    for payload in stale:
        submission_id = str(payload.get("id", ""))
        if runtime.state.is_finished(submission_id) or runtime.pool.holds(submission_id):
            ledger.settle(submission_id)
            continue
        if submission_id in present:
            continue
        log.warning("klaviyo_middleware: re-enqueueing %s, lost with a worker", submission_id)
        app.send_task(TASK_NAME, args=[payload], queue=QUEUE, task_id=submission_id)
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

