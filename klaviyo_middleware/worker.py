"""The background worker that drains the spool into Klaviyo.

It follows the habits of Sentry's and PostHog's clients: threads started
lazily and restarted in a forked child (``os.register_at_fork`` plus a PID
check, so gunicorn ``--preload`` and uWSGI work), a bounded flush at
interpreter exit, and observers that can never stop delivery. What differs is
that nothing lives only in memory: the spool holds every submission until
Klaviyo has it, so an exit, a crash or ``kill -9`` only delays delivery.
"""

from __future__ import annotations

import atexit
import os
import random
import threading
import time
import weakref
from dataclasses import dataclass

from . import bulk, steps
from .client import KlaviyoClient, KlaviyoError
from .hooks import Hooks
from .ratelimits import ENDPOINT_LIMITS, Limits, endpoint_for, scaled
from .redact import get_logger
from .retry import RetryPolicy
from .spool import Claimed, Spool, new_owner

log = get_logger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """How the worker behaves.

    :param threads: delivery threads in each process.
    :param batch: submissions a thread leases at a time.
    :param lease: seconds a lease lasts before another worker may take over;
        renewed after every step.
    :param poll: seconds between looks at the spool when idle (submissions
        from this process wake the worker at once).
    :param max_age: seconds after which a submission that still fails
        transiently goes to the dead letters.
    :param retry_base: first backoff ceiling in seconds (full jitter).
    :param retry_cap: largest backoff ceiling in seconds.
    :param rate_share: share of Klaviyo's per-account limits this site uses.
    :param exit_timeout: seconds spent delivering at interpreter exit.
    :param batching: when a lease round comes back full (a backlog), send
        through Klaviyo's bulk endpoints instead of one call per step.
    :param bulk_size: submissions in one bulk round.
    """

    threads: int = 2
    batch: int = 20
    lease: float = 60.0
    poll: float = 1.0
    max_age: float = 3 * 24 * 3600.0
    retry_base: float = 1.0
    retry_cap: float = 600.0
    rate_share: float = 0.9
    exit_timeout: float = 2.0
    batching: bool = True
    bulk_size: int = 1000


class SpoolWorker:
    def __init__(
        self,
        spool: Spool,
        client: KlaviyoClient,
        hooks: Hooks,
        options: WorkerOptions | None = None,
    ) -> None:
        self.spool = spool
        self.client = client
        self.hooks = hooks
        self.options = options or WorkerOptions()
        self._limits: dict[str, Limits] = {
            name: scaled(limits, self.options.rate_share)
            for name, limits in ENDPOINT_LIMITS.items()
        }
        self._retry = RetryPolicy(base=self.options.retry_base, cap=self.options.retry_cap)
        self._reset()
        self._closed = False
        # Weak references: registering the worker must not keep it alive.
        reference = weakref.ref(self)

        def after_fork() -> None:
            worker = reference()
            if worker is not None:
                worker._reset()

        os.register_at_fork(after_in_child=after_fork)
        atexit.register(_close_at_exit, reference)

    def _reset(self) -> None:
        """Forget threads and locks: after a fork they belong to the parent."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pid: int | None = None
        self._owner = ""
        self._last_housekeeping = 0.0
        # Re-seeded per process: forked workers must not share their jitter.
        self._rng = random.Random()  # noqa: S311 - jitter, not security
        self.client.reset()

    # -- lifecycle ----------------------------------------------------------

    def ensure_running(self) -> None:
        if self._pid == os.getpid() and not self._closed:
            return
        with self._lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._owner = new_owner()
            self.spool.register_worker(self._owner)
            self._stopping.clear()
            for number in range(self.options.threads):
                thread = threading.Thread(
                    target=self._run, name=f"klaviyo-spool-{number}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
            self._pid = os.getpid()

    def notify(self) -> None:
        self._wake.set()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the spool holds nothing for this account; ``False`` on timeout."""
        self.ensure_running()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.spool.outstanding() > 0:
            self.notify()
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads; undelivered submissions stay in the spool."""
        if self._closed:
            return
        self._closed = True
        if self._pid != os.getpid():
            return
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            self.spool.unregister_worker(self._owner)
        finally:
            self.client.close()
            self.spool.close_all()

    # -- the loop -----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            # Close this thread's connection under the fork guard, now,
            # rather than whenever its thread state is torn down.
            self.spool.close()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                busy = self._tick()
            except Exception:
                # A broken spool file or a bug must not kill the thread for
                # good; the work stays in the spool and is tried again.
                log.exception("klaviyo_middleware: spool worker error")
                busy = False
                self._stopping.wait(self.options.poll)
            if not busy:
                self._wake.wait(self._idle_wait())
                # Once stopping, the event stays set so that every thread,
                # not only the first to wake, sees it at once.
                if not self._stopping.is_set():
                    self._wake.clear()

    def _idle_wait(self) -> float:
        next_due = self.spool.next_due()
        if next_due is None:
            return self.options.poll
        return min(self.options.poll, max(0.0, next_due - time.time()))

    def _tick(self) -> bool:
        now = time.time()
        if now - self._last_housekeeping > 5.0:
            self._last_housekeeping = now
            self.spool.register_worker(self._owner, now)
            self.spool.release_dead_owners()
        pause = self.spool.paused_until() - now
        if pause > 0:
            self._stopping.wait(min(pause, self.options.poll))
            return True
        claimed = self.spool.claim(self._owner, self.options.batch, self.options.lease)
        if self.options.batching and len(claimed) >= self.options.batch:
            # A full round means a backlog: take more and use the bulk endpoints.
            claimed += self.spool.claim(
                self._owner, max(0, self.options.bulk_size - len(claimed)), self.options.lease
            )
            self._deliver_bulk(claimed)
            return True
        for item in claimed:
            if self._stopping.is_set():
                break
            self._deliver(item)
        return bool(claimed)

    def _deliver(self, item: Claimed) -> None:
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
            if not self.spool.save_progress(self._owner, item, self.options.lease):
                log.warning(
                    "klaviyo_middleware: lost the lease on %s; another worker has it",
                    submission.id,
                )
                return
        self.spool.complete(self._owner, item)
        self.hooks.delivered(submission)

    def _deliver_bulk(self, items: list[Claimed]) -> None:
        """Deliver a backlog through the bulk endpoints, stage by stage."""
        active = list(items)
        failed: dict[str, KlaviyoError] = {}
        singles: list[Claimed] = []
        for stage in bulk.stages():
            for call in stage(active):
                members = [item for item, _ in call.members]
                if not self._wait_for_capacity(members, call.endpoint):
                    return
                try:
                    call.send(self.client)
                except KlaviyoError as error:
                    if error.status == 429:
                        self.spool.pause(time.time() + (error.retry_after or self._backoff(1)))
                    if error.transient:
                        failed.update((item.submission.id, error) for item in members)
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
                kept = self.spool.save_progress_many(self._owner, members, self.options.lease)
                lost = {item.submission.id for item in members} - kept
                if lost:
                    log.warning("klaviyo_middleware: lost %d leases during a bulk round",
                                len(lost))
                    active = [item for item in active if item.submission.id not in lost]
            excluded = set(failed) | {item.submission.id for item in singles}
            active = [item for item in active if item.submission.id not in excluded]
        self.spool.complete_many(self._owner, active)
        for item in active:
            self.hooks.delivered(item.submission)
        for item in items:
            if item.submission.id in failed:
                self._failed(item, failed[item.submission.id])
        for item in singles:
            if self._stopping.is_set():
                return
            self._deliver(item)

    def _wait_for_capacity(self, items: list[Claimed], endpoint: str) -> bool:
        """Wait out a shared pause and the rate limit; ``False`` if stopping."""
        while not self._stopping.is_set():
            pause = self.spool.paused_until() - time.time()
            wait = pause if pause > 0 else self.spool.take_rate_slot(
                endpoint, self._limits[endpoint]
            )
            if wait <= 0:
                return True
            # Keep the leases while waiting, so nobody else picks these up.
            kept = self.spool.save_progress_many(self._owner, items, self.options.lease + wait)
            if len(kept) < len(items):
                return False
            self._stopping.wait(min(wait, self.options.lease / 2))
        return False

    def _failed(self, item: Claimed, error: KlaviyoError) -> None:
        submission = item.submission
        now = time.time()
        if error.status == 429:
            self.spool.pause(now + (error.retry_after or self._backoff(1)))
        delay = self._retry.later(error, item.attempts + 1, now - item.created_at,
                                  self.options.max_age, self._rng)
        if delay is None:
            self._bury(item, error)
            return
        log.warning(
            "klaviyo_middleware: submission %s will be retried in %.1fs: %s",
            submission.id,
            delay,
            error,
        )
        self.spool.reschedule(self._owner, item, now + delay, error.to_dict())
        self.hooks.retrying(submission, error, delay)

    def _bury(self, item: Claimed, error: KlaviyoError) -> None:
        log.error(
            "klaviyo_middleware: submission %s dead-lettered (steps done: %s): %s",
            item.submission.id,
            ", ".join(item.progress.done) or "none",
            error,
        )
        self.spool.bury(self._owner, item, error.to_dict())
        self.hooks.dead(item.submission, error)

    def _backoff(self, attempt: int) -> float:
        return self._retry.backoff(attempt, self._rng)


def _close_at_exit(reference: weakref.ReferenceType[SpoolWorker]) -> None:
    worker = reference()
    if worker is None or worker._closed or worker._pid != os.getpid():
        return
    # A bounded flush: deliver what can go in a moment, leave the rest in the
    # spool for the next process instead of holding up the shutdown.
    if worker.spool.outstanding():
        worker.flush(worker.options.exit_timeout)
    worker.close(timeout=1.0)
