"""The spool's sender: the background threads that drain the spool into Klaviyo.

It follows the habits of Sentry's and PostHog's clients: threads started
lazily and restarted in a forked child (``os.register_at_fork`` plus a PID
check, so gunicorn ``--preload`` and uWSGI work), a bounded flush at
interpreter exit, and observers that can never stop delivery. What differs is
that nothing lives only in memory: the spool holds every submission until
Klaviyo has it, so an exit, a crash or ``kill -9`` only delays delivery.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

from klaviyo_middleware.delivery.courier import PROBE_INTERVAL, ROUND_INTERVAL, Courier
from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.identities import new_owner
from klaviyo_middleware.delivery.import_jobs import JobFollow
from klaviyo_middleware.delivery.retention import DEFAULT_DEAD_LETTER_MAX_AGE
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.klaviyo.account import (
    DEFAULT_RATE_LIMIT_SHARE,
    DEFAULT_RETRY_MAX_AGE,
    RETRY_BASE,
    RETRY_CAP,
)
from klaviyo_middleware.klaviyo.client import KlaviyoClient
from klaviyo_middleware.klaviyo.limits import ENDPOINT_LIMITS, RateLimits, scaled
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class SenderOptions:
    """How the sender behaves.

    The fields a site sets are its options of the same names
    (docs/configuration.md); the rest are for tests and benchmarks.

    :param sender_threads: delivery threads in each process.
    :param batch: submissions a thread leases at a time without ``batching``.
    :param lease: seconds a lease lasts before another sender (in any process) may take over;
        renewed after every step.
    :param poll: seconds between looks at the spool when idle (submissions
        from this process wake the sender at once).
    :param retry_max_age: seconds after which a submission that still fails
        transiently goes to the dead letters.
    :param retry_base: first backoff ceiling in seconds (full jitter).
    :param retry_cap: largest backoff ceiling in seconds.
    :param rate_limit_share: share of Klaviyo's per-account limits this site uses.
    :param exit_timeout: seconds spent delivering at interpreter exit.
    :param batching: deliver in rounds at a cadence: whenever more than one
        submission is due, through Klaviyo's bulk endpoints; ``False``: one
        call per step, ``batch`` submissions at a time.
    :param bulk_size: most submissions in one round.
    :param round_interval: seconds between the starts of two rounds, for
        all processes on the spool.
    :param round_gather: seconds a round waits after taking its turn before
        it claims, while the other processes move what they accepted.
    :param dead_letter_max_age: seconds a dead letter is kept.
    :param jobs: how profile import jobs are followed until Klaviyo has
        processed them.
    """

    sender_threads: int = 2
    batch: int = 20
    lease: float = 60.0
    poll: float = 1.0
    retry_max_age: float = DEFAULT_RETRY_MAX_AGE
    retry_base: float = RETRY_BASE
    retry_cap: float = RETRY_CAP
    rate_limit_share: float = DEFAULT_RATE_LIMIT_SHARE
    exit_timeout: float = 2.0
    batching: bool = True
    bulk_size: int = 1000
    round_interval: float = ROUND_INTERVAL
    round_gather: float = 0.05
    dead_letter_max_age: float = DEFAULT_DEAD_LETTER_MAX_AGE
    jobs: JobFollow = field(default_factory=JobFollow)


# Every sender made in this process, for as long as it lives (weakly held).
_SENDERS: weakref.WeakSet[SpoolSender] = weakref.WeakSet()


class SpoolSender:
    @staticmethod
    def open_senders() -> list[SpoolSender]:
        """The senders of this process not closed yet (a test suite closes
        those its test left running)."""
        return [sender for sender in list(_SENDERS) if not sender._closed]

    def __init__(
        self,
        spool: Spool,
        client: KlaviyoClient,
        hooks: Hooks,
        options: SenderOptions | None = None,
    ) -> None:
        self.spool = spool
        self.client = client
        self.hooks = hooks
        self.options = options or SenderOptions()
        self._limits: dict[str, RateLimits] = {
            name: scaled(limits, self.options.rate_limit_share)
            for name, limits in ENDPOINT_LIMITS.items()
        }
        self._retry = RetryPolicy(base=self.options.retry_base, cap=self.options.retry_cap)
        self._reset()
        self._closed = False
        _SENDERS.add(self)
        # Weak references: registering the sender must not keep it alive.
        reference = weakref.ref(self)

        def after_fork() -> None:
            sender = reference()
            if sender is not None:
                sender._reset()

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
        self._last_expiry = 0.0
        self._last_adoption = 0.0
        self._courier: Courier | None = None
        self.client.reset()

    # -- lifecycle ----------------------------------------------------------

    def ensure_running(self) -> None:
        if self._pid == os.getpid() and not self._closed:
            self._revive()
            return
        with self._lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._owner = new_owner()
            self.spool.register_sender(self._owner)
            # Per process: a forked child has its own owner and jitter.
            self._courier = Courier(
                self.spool, self.client, self._owner, limits=self._limits, retry=self._retry,
                lease=self.options.lease, max_age=self.options.retry_max_age, hooks=self.hooks,
                stopping=self._stopping, jobs=self.options.jobs,
            )
            self._stopping.clear()
            self._threads = [self._start_thread(number)
                             for number in range(self.options.sender_threads)]
            self._pid = os.getpid()

    def _start_thread(self, number: int) -> threading.Thread:
        thread = threading.Thread(target=self._run, name=f"klaviyo-spool-{number}", daemon=True)
        thread.start()
        return thread

    def _revive(self) -> None:
        """The watchdog: restart any delivery thread that died anyway.

        The loop survives every exception, so this only catches what it
        cannot (a ``BaseException`` from a hook, a bug in the loop itself);
        without it, posts would still be accepted and sit in the spool until
        the process restarts. Called on every submission and by the living
        threads' housekeeping, so it costs one ``is_alive()`` per thread.
        """
        if self._stopping.is_set() or all(thread.is_alive() for thread in self._threads):
            return
        with self._lock:
            if self._stopping.is_set() or self._pid != os.getpid():
                return
            for number, thread in enumerate(self._threads):
                if not thread.is_alive():
                    log.error("klaviyo_middleware: delivery thread %s had stopped; "
                              "restarting it", thread.name)
                    self._threads[number] = self._start_thread(number)

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
            self.spool.unregister_sender(self._owner)
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
                if not busy:
                    self._wake.wait(self._idle_wait())
                    # Once stopping, the event stays set so that every thread,
                    # not only the first to wake, sees it at once.
                    if not self._stopping.is_set():
                        self._wake.clear()
            except Exception:
                # Every call in the loop is inside this try: a locked or
                # replaced spool file, or a bug, must not end delivery. The
                # work stays in the spool and is tried again after a pause.
                log.exception("klaviyo_middleware: spool sender error")
                self._stopping.wait(self.options.poll)

    def _idle_wait(self) -> float:
        next_due = self.spool.next_due()
        if next_due is None:
            return self.options.poll
        return min(self.options.poll, max(0.0, next_due - time.time()))

    def _keep_data_short(self, now: float) -> None:
        """Personal data no longer than needed: expire old dead letters and
        profile marks nobody waits for (once a minute) and, when nothing is
        queued, empty the write-ahead log — once a minute for the whole
        spool: the checkpoint holds every process's writes back while it
        syncs the file, and with eight processes doing it every few seconds
        it was the longest wait a visitor had (benchmarks/multiprocess.py)."""
        if now - self._last_expiry > 60.0:
            self._last_expiry = now
            self.spool.expire_dead_letters(self.options.dead_letter_max_age, now)
            self.spool.prune_marks()
        if self.spool.outstanding() == 0:
            self.spool.tidy_intake()
            if self.spool.take_turn("truncate_wal", 60.0, now):
                self.spool.truncate_wal()

    def _tick(self) -> bool:
        now = time.time()
        if now - self._last_housekeeping > 5.0:
            self._last_housekeeping = now
            self.spool.register_sender(self._owner, now)
            self.spool.release_dead_owners()
            # What stopped processes accepted and had not moved yet.
            self.spool.adopt_orphans()
            if now - self._last_adoption > 60.0:
                self._last_adoption = now
                # What a refused key held, once its site runs with a new one.
                self.spool.adopt_refused_accounts(now)
            self._revive()
            self._keep_data_short(now)
        pause = self.spool.paused_for(now)
        if pause > 0:
            # Nothing goes to Klaviyo, but what this process accepted goes
            # into the shared file, where every process sees it.
            self.spool.move_intake()
            self._stopping.wait(min(pause, self.options.poll))
            return True
        assert self._courier is not None, "threads start after the courier is built"
        if self.options.batching:
            return self._round(now)
        claimed = self.spool.claim(self._owner, self.options.batch, self.options.lease)
        if not claimed and self._probe(now):
            return True
        self._courier.deliver_round(claimed, use_bulk=False)
        return bool(claimed)

    def _round(self, now: float) -> bool:
        """One delivery round at the spool's cadence: at most one round
        starts every ``round_interval`` for all processes on the spool, and
        it takes everything due. Alone, a submission goes at once, one call
        a step; what arrives while a round is young waits for the next
        (Nagle's algorithm, for Klaviyo): at 20 posts a second that is one
        bulk round a second, two or three calls for twenty submissions,
        where the submissions' own calls would overrun the single
        endpoints' limits and queue behind them."""
        assert self._courier is not None
        due = self.spool.next_due()
        if due is None or due > time.time():
            return self._probe(now)
        wait = self.spool.turn_free_in("round", self.options.round_interval, now)
        if wait > 0:
            # Whoever starts the next round, in whichever process, takes
            # what this process accepted meanwhile from the shared file.
            self.spool.move_intake()
            self._stopping.wait(min(wait, self.options.poll))
            return True
        if not self.spool.claim_turn("round", self.options.round_interval, now):
            return True  # another sender took it this instant
        # The other processes' senders wake as the turn frees too, find it
        # taken and move what they accepted meanwhile: a moment's gathering
        # lets this round take it, rather than the next, a second later.
        self._stopping.wait(self.options.round_gather)
        claimed = self.spool.claim(self._owner, self.options.bulk_size, self.options.lease)
        self._courier.deliver_round(claimed, use_bulk=len(claimed) > 1)
        return bool(claimed)

    def _probe(self, now: float) -> bool:
        """While Klaviyo fails, everything waits out its backoff: one
        submission, the earliest, asks whether it answers again (one probe
        an interval, for every process on the spool)."""
        assert self._courier is not None
        if (self._courier.outage_since is None
                or not self.spool.take_turn("probe", PROBE_INTERVAL, now)):
            return False
        claimed = self.spool.claim(self._owner, 1, self.options.lease, due_by=math.inf)
        self._courier.deliver_round(claimed, use_bulk=False)
        return bool(claimed)


def _close_at_exit(reference: weakref.ReferenceType[SpoolSender]) -> None:
    sender = reference()
    if sender is None or sender._closed or sender._pid != os.getpid():
        return
    # A bounded flush: deliver what can go in a moment, leave the rest in the
    # spool for the next process instead of holding up the shutdown.
    if sender.spool.outstanding():
        sender.flush(sender.options.exit_timeout)
    sender.close(timeout=1.0)
