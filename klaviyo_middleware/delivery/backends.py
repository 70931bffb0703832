"""Delivery backends (DESIGN §7): who sends a submission to Klaviyo, and when.

Every backend has the same small interface, :class:`Delivery`:

- :class:`SpoolDelivery` (the default) commits the submission to the SQLite
  spool and answers at once; a background worker delivers it.
- :class:`SyncDelivery` sends inline, before the visitor gets an answer, with
  a bounded retry budget so a slow Klaviyo costs the visitor seconds at most.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.spool.store import Spool, SpoolFull
from klaviyo_middleware.delivery.spool.worker import SpoolWorker, WorkerOptions
from klaviyo_middleware.klaviyo import steps
from klaviyo_middleware.klaviyo.client import KlaviyoClient, KlaviyoError, unserialisable
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)


@dataclass
class Outcome:
    """What a backend did with a submission.

    ``accepted`` means the submission is safe: delivered, or durably queued
    for delivery. When it is not, ``error`` says why.
    """

    accepted: bool
    delivered: bool = False
    queued: bool = False
    profile_id: str | None = None
    error: KlaviyoError | None = None


class Delivery(Protocol):
    def submit(self, submission: Submission) -> Outcome: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self) -> None: ...


class SyncDelivery:
    """Send inline (``delivery="sync"``): for tests and small sites.

    A transient failure is retried within ``retry.budget`` seconds; after
    that the visitor is asked to try again, so nothing is silently lost.
    """

    def __init__(
        self,
        client: KlaviyoClient,
        hooks: Hooks,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.hooks = hooks
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock

    def submit(self, submission: Submission) -> Outcome:
        """Deliver now; the visitor's wait is bounded by :attr:`deadline`."""
        progress = steps.Progress()
        with self.client.deadline(self.deadline):
            return self._attempts(submission, progress)

    @property
    def deadline(self) -> float:
        """The longest a visitor waits: the retry budget plus one read
        timeout (the last attempt may start just before the budget ends).
        Every call's timeouts shrink to what is left of it."""
        return self.retry.budget + self.client.timeout[1]

    def _attempts(self, submission: Submission, progress: steps.Progress) -> Outcome:
        attempt = 0
        started = self._clock()
        while True:
            attempt += 1
            try:
                steps.deliver(self.client, submission, progress)
            except KlaviyoError as error:
                # Time spent in calls counts too, not only the sleeps.
                delay = self.retry.next_delay(error, attempt, self._clock() - started)
                if delay is None:
                    return self._failed(submission, progress, error)
                log.warning(
                    "klaviyo_middleware: retrying submission %s in %.2fs: %s",
                    submission.id,
                    delay,
                    error,
                )
                self.hooks.retrying(submission, error, delay)
                self._sleep(delay)
                continue
            self.hooks.delivered(submission)
            return Outcome(accepted=True, delivered=True, profile_id=progress.profile_id)

    def _failed(
        self, submission: Submission, progress: steps.Progress, error: KlaviyoError
    ) -> Outcome:
        log.error(
            "klaviyo_middleware: submission %s not delivered (steps done: %s): %s",
            submission.id,
            ", ".join(progress.done) or "none",
            error,
        )
        if not error.transient:
            self.hooks.dead(submission, error)
        return Outcome(accepted=False, profile_id=progress.profile_id, error=error)

    def flush(self, timeout: float | None = None) -> bool:
        return True  # nothing is ever pending

    def close(self) -> None:
        self.client.close()


class SpoolDelivery:
    """Commit to the spool, answer at once, deliver in the background."""

    def __init__(
        self,
        spool: Spool,
        client: KlaviyoClient,
        hooks: Hooks,
        options: WorkerOptions | None = None,
    ) -> None:
        self.spool = spool
        self.worker = SpoolWorker(spool, client, hooks, options)
        # Started now rather than at the first submission, so that a
        # restarted process delivers what an earlier one left in the spool.
        self.worker.ensure_running()

    def submit(self, submission: Submission) -> Outcome:
        try:
            self.spool.enqueue(submission)
        except SpoolFull as exc:
            log.error("klaviyo_middleware: refusing submission %s: %s", submission.id, exc)
            return Outcome(accepted=False, error=KlaviyoError(str(exc), transient=True))
        except sqlite3.Error as exc:
            log.error("klaviyo_middleware: could not spool %s: %r", submission.id, exc)
            return Outcome(accepted=False, error=KlaviyoError("spool unavailable", transient=True))
        except (TypeError, ValueError) as exc:
            # Only a before_send hook can put a value JSON cannot hold into a
            # submission; trying again would not help.
            log.error("klaviyo_middleware: submission %s cannot be stored: %s",
                      submission.id, type(exc).__name__)
            return Outcome(accepted=False, error=unserialisable(exc))
        self.worker.ensure_running()
        self.worker.notify()
        return Outcome(accepted=True, queued=True)

    def flush(self, timeout: float | None = None) -> bool:
        return self.worker.flush(timeout)

    def close(self) -> None:
        self.worker.close()


class CeleryDelivery:
    """Enqueue one Celery task per submission (``delivery="celery"``).

    The visitor waits only for the broker to take the task; if the broker
    cannot, the visitor is asked to try again (nothing is silently dropped).
    Hooks that observe delivery run in the web process and so do not fire
    here: watch the workers (Flower, the task results) instead.
    """

    def __init__(self, app: Any, owns_app: bool = False) -> None:
        from klaviyo_middleware.delivery.celery.ledger import Ledger, wants_ledger
        from klaviyo_middleware.delivery.celery.tasks import register

        self.app = app
        self.task = register(app)
        self._owns_app = owns_app
        # With a Redis broker, a task a worker took can vanish with it: keep
        # a ledger entry the workers can recover it from (see ledger.py).
        broker = str(app.conf.broker_url or "")
        self.ledger = Ledger(broker) if wants_ledger(broker) else None

    def submit(self, submission: Submission) -> Outcome:
        payload = submission.to_dict()
        try:
            if self.ledger is not None:
                self.ledger.record(submission.id, payload)
            self.task.apply_async(
                args=[payload],
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
            )
        except Exception as exc:
            log.error("klaviyo_middleware: could not enqueue %s: %s", submission.id,
                      type(exc).__name__)
            self._forget(submission.id)
            return Outcome(accepted=False, error=KlaviyoError("broker unavailable",
                                                              transient=True))
        return Outcome(accepted=True, queued=True)

    def _forget(self, submission_id: str) -> None:
        """The visitor is told to try again: the failed attempt must not be sent too."""
        if self.ledger is None:
            return
        try:
            self.ledger.settle(submission_id)
        except Exception as exc:
            log.warning("klaviyo_middleware: could not forget %s: %s", submission_id,
                        type(exc).__name__)

    def flush(self, timeout: float | None = None) -> bool:
        return True  # delivery happens on the workers; nothing is pending here

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.redis.close()
        # Close broker connections of an app we made; a site's own app is its own.
        if self._owns_app:
            self.app.close()
