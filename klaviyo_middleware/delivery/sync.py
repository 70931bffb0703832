"""``delivery="sync"``: send inline, before the visitor gets an answer."""

from __future__ import annotations

import time
from collections.abc import Callable

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.protocol import Outcome
from klaviyo_middleware.errors import DeliveryError
from klaviyo_middleware.klaviyo import steps
from klaviyo_middleware.klaviyo.client import KlaviyoClient
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)


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
        progress = Progress()
        with self.client.deadline(self.deadline):
            return self._attempts(submission, progress)

    @property
    def deadline(self) -> float:
        """The longest a visitor waits: the retry budget plus one read
        timeout (the last attempt may start just before the budget ends).
        Every call's timeouts shrink to what is left of it."""
        return self.retry.budget + self.client.timeout[1]

    def _attempts(self, submission: Submission, progress: Progress) -> Outcome:
        attempt = 0
        started = self._clock()
        while True:
            attempt += 1
            try:
                steps.deliver(self.client, submission, progress)
            except DeliveryError as error:
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
        self, submission: Submission, progress: Progress, error: DeliveryError
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
