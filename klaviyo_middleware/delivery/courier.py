"""Sending leased submissions to Klaviyo: one call per step, or bulk rounds.

A *lease store* hands out submissions to one owner at a time and records
what happens to them: the SQLite spool on one machine
(:class:`~klaviyo_middleware.delivery.spool.store.Spool`), the Redis pool for a Celery
fleet (:class:`~klaviyo_middleware.delivery.celery.pool.RedisPool`). The
:class:`Courier` does the sending for both, so the two deliver — and retry,
pause, dead-letter and batch — exactly alike:

- before every call it waits out the account-wide pause and takes a slot of
  the endpoint's rate limit, renewing its leases while it waits;
- after every call it saves the progress (a step Klaviyo accepted is never
  sent again) and stops touching a submission whose lease it lost;
- a failure is retried later (Klaviyo's ``Retry-After``, else jittered
  backoff) or buried with Klaviyo's error once permanent or too old;
- a backlog goes through the bulk endpoints stage by stage, and a bulk call
  Klaviyo refuses outright is replayed one call per step, so one bad
  submission cannot hold back the rest.

A single Celery task is a lease store too (the broker leases the message,
:mod:`klaviyo_middleware.delivery.celery.single`), so all three queued paths
share this loop. The one policy that differs is how long to wait for
capacity: a spool thread waits (it has nothing else to do), a Celery worker
slot should not sit idle behind a pause, so a courier with ``patience``
raises :class:`Postponed` instead and the task is retried when capacity
returns. ``delivery="sync"`` keeps a loop of its own
(:mod:`klaviyo_middleware.delivery.sync`): a visitor is waiting, so it
retries inline within a time budget and reports failure to them instead of
rescheduling.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Protocol

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.klaviyo import bulk, steps
from klaviyo_middleware.klaviyo.client import KlaviyoClient, KlaviyoError, unserialisable
from klaviyo_middleware.klaviyo.limits import RateLimits, endpoint_for
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)


class LeaseStore(Protocol):
    """What the courier needs from wherever leased submissions live.

    Due times (``reschedule``) are wall-clock seconds since the epoch; the
    account-wide pause is a duration, the one convention every store can
    keep, whichever clock it lives on (SQLite's rows, Redis's own clock).
    """

    def save_progress_many(self, owner: str, items: list[Leased], lease: float) -> set[str]:
        """Record progress and renew leases; the ids whose lease still held."""
        ...

    def complete_many(self, owner: str, items: list[Leased]) -> None: ...

    def reschedule(
        self, owner: str, claimed: Leased, due_at: float, error: dict[str, Any]
    ) -> None: ...

    def bury(self, owner: str, claimed: Leased, error: dict[str, Any]) -> None: ...

    def pause(self, seconds: float) -> None:
        """Pause the whole account for ``seconds`` (a pause only grows)."""
        ...

    def paused_for(self) -> float:
        """Seconds the account's pause still lasts; 0 when not paused."""
        ...

    def take_rate_slot(self, endpoint: str, limits: RateLimits) -> float: ...


class Postponed(Exception):
    """Capacity returns in :attr:`seconds`, later than the courier's patience:
    hand the submission back (progress is saved) and try again then."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"capacity returns in {seconds:.1f}s")
        self.seconds = seconds


class Courier:
    """Delivers what ``owner`` leased from ``store``.

    :param limits: endpoint → the rate limits this site may use.
    :param lease: seconds each renewal of a lease lasts.
    :param max_age: seconds after which a transient failure is buried.
    :param stopping: set to make the courier give up waiting and return;
        what it held stays in the store.
    :param patience: wait at most this long for capacity (the shared pause
        or a rate-limit slot); a longer wait raises :class:`Postponed`.
        ``None``: wait as long as it takes.
    """

    def __init__(
        self,
        store: LeaseStore,
        client: KlaviyoClient,
        owner: str,
        *,
        limits: dict[str, RateLimits],
        retry: RetryPolicy,
        lease: float,
        max_age: float,
        hooks: Hooks | None = None,
        stopping: threading.Event | None = None,
        patience: float | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.owner = owner
        self.limits = limits
        self.retry = retry
        self.lease = lease
        self.max_age = max_age
        self.hooks = hooks or Hooks()
        self.stopping = stopping or threading.Event()
        self.patience = patience
        # One per courier: forked workers must not share their jitter.
        self._rng = random.Random()  # noqa: S311 - jitter, not security

    def deliver_round(self, items: list[Leased], use_bulk: bool) -> None:
        if use_bulk:
            self.deliver_bulk(items)
            return
        for item in items:
            if self.stopping.is_set():
                return
            self.deliver(item)

    def deliver(self, item: Leased) -> None:
        """Every pending step of one submission, one call each."""
        submission = item.submission
        for step in steps.pending(submission, item.progress):
            if not self._wait_for_capacity([item], endpoint_for(step)):
                return
            try:
                steps.run_step(self.client, submission, step, item.progress)
            except KlaviyoError as error:
                self._failed(item, error)
                return
            except Exception as exc:
                log.exception("klaviyo_middleware: unexpected error delivering %s", submission.id)
                self._failed(item, KlaviyoError(f"unexpected {type(exc).__name__}", transient=True))
                return
            if not self.store.save_progress_many(self.owner, [item], self.lease):
                log.warning(
                    "klaviyo_middleware: lost the lease on %s; another worker has it",
                    submission.id,
                )
                return
        self.store.complete_many(self.owner, [item])
        self.hooks.delivered(submission)

    def deliver_bulk(self, items: list[Leased]) -> None:
        """Deliver a backlog through the bulk endpoints, stage by stage."""
        items = self._sendable(items)
        active = list(items)
        # id → the error and the jitter of the call that failed it.
        failed: dict[str, tuple[KlaviyoError, float]] = {}
        singles: list[Leased] = []
        for stage in bulk.stages():
            for call in stage(active):
                members = [item for item, _ in call.members]
                if not self._wait_for_capacity(members, call.endpoint):
                    return
                try:
                    call.send(self.client)
                except KlaviyoError as error:
                    if error.status == 429:
                        self.store.pause(error.retry_after or self._backoff(1))
                    if error.transient:
                        # One jitter for the whole call keeps its submissions
                        # due together, so that they are retried as one bulk
                        # call rather than scattered into single ones.
                        jitter = self._rng.random()
                        failed.update((item.submission.id, (error, jitter)) for item in members)
                    else:
                        # Klaviyo refused the whole job; one call per step
                        # finds the submission at fault and delivers the rest.
                        log.warning("klaviyo_middleware: bulk call refused (%s); "
                                    "delivering its %d submissions one by one",
                                    error, len(members))
                        singles.extend(members)
                    continue
                for item, done in call.members:
                    item.progress.done.extend(step for step in done
                                              if step not in item.progress.done)
                kept = self.store.save_progress_many(self.owner, members, self.lease)
                lost = {item.submission.id for item in members} - kept
                if lost:
                    log.warning("klaviyo_middleware: lost %d leases during a bulk round",
                                len(lost))
                    active = [item for item in active if item.submission.id not in lost]
            excluded = set(failed) | {item.submission.id for item in singles}
            active = [item for item in active if item.submission.id not in excluded]
        self.store.complete_many(self.owner, active)
        for item in active:
            self.hooks.delivered(item.submission)
        now = time.time()
        for item in items:
            if item.submission.id in failed:
                cause, jitter = failed[item.submission.id]
                self._failed(item, cause, _SharedJitter(jitter), now)
        for item in singles:
            if self.stopping.is_set():
                return
            self.deliver(item)

    def _sendable(self, items: list[Leased]) -> list[Leased]:
        """Bury alone what cannot be sent as JSON: in a bulk body it would
        fail the call for everyone with it."""
        sendable = []
        for item in items:
            try:
                json.dumps(item.submission.to_dict(), allow_nan=False)
            except (TypeError, ValueError) as exc:
                self._bury(item, unserialisable(exc))
                continue
            sendable.append(item)
        return sendable

    def _wait_for_capacity(self, items: list[Leased], endpoint: str) -> bool:
        """Wait out a shared pause and the rate limit; ``False`` if stopping.

        Raises :class:`Postponed` when the wait would outlast ``patience``."""
        while not self.stopping.is_set():
            pause = self.store.paused_for()
            wait = pause if pause > 0 else self.store.take_rate_slot(
                endpoint, self.limits[endpoint]
            )
            if wait <= 0:
                return True
            if self.patience is not None and wait > self.patience:
                raise Postponed(wait)
            # Keep the leases while waiting, so nobody else picks these up.
            kept = self.store.save_progress_many(self.owner, items, self.lease + wait)
            if len(kept) < len(items):
                return False
            self.stopping.wait(min(wait, self.lease / 2))
        return False

    def _failed(self, item: Leased, error: KlaviyoError,
                rng: random.Random | None = None, now: float | None = None) -> None:
        submission = item.submission
        now = time.time() if now is None else now
        if error.status == 429:
            self.store.pause(error.retry_after or self._backoff(1))
        delay = self.retry.later(error, item.attempts + 1, now - item.created_at,
                                 self.max_age, rng or self._rng)
        if delay is None:
            self._bury(item, error)
            return
        log.warning(
            "klaviyo_middleware: submission %s will be retried in %.1fs: %s",
            submission.id,
            delay,
            error,
        )
        self.store.reschedule(self.owner, item, now + delay, error.to_dict())
        self.hooks.retrying(submission, error, delay)

    def _bury(self, item: Leased, error: KlaviyoError) -> None:
        log.error(
            "klaviyo_middleware: submission %s dead-lettered (steps done: %s): %s",
            item.submission.id,
            ", ".join(item.progress.done) or "none",
            error,
        )
        self.store.bury(self.owner, item, error.to_dict())
        self.hooks.dead(item.submission, error)

    def _backoff(self, attempt: int) -> float:
        return self.retry.backoff(attempt, self._rng)


class _SharedJitter(random.Random):
    """Jitter drawn once and shared: every draw gives the same fraction."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction
