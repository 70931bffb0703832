"""When to ask Klaviyo again (design.md §4).

Exponential backoff with full jitter, except that a 429's ``Retry-After`` is
honoured exactly: Klaviyo says when capacity returns, and asking earlier only
burns the shared account quota.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from klaviyo_middleware.errors import DeliveryError


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up.

    :param base: first backoff ceiling in seconds.
    :param cap: largest backoff ceiling in seconds.
    :param max_attempts: attempts in all, the first one included.
    :param budget: seconds allowed in all, calls and waits; a wait that would
        go past it ends the attempts (keeps a synchronous visitor's wait
        bounded, see :class:`~klaviyo_middleware.delivery.sync.SyncDelivery`).
    """

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int = 3
    budget: float = 5.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before attempt ``attempt + 1`` (``attempt`` ≥ 1)."""
        ceiling = min(self.cap, self.base * (2 ** (attempt - 1)))
        return (rng or random).uniform(0, ceiling)

    def delay(self, error: DeliveryError, attempt: int, rng: random.Random | None = None) -> float:
        if error.retry_after is not None:
            return error.retry_after
        return self.backoff(attempt, rng)

    def later(
        self, error: DeliveryError, attempt: int, age: float, max_age: float,
        rng: random.Random | None = None,
    ) -> float | None:
        """For queued delivery: seconds until the next attempt, or ``None`` to
        give up (a permanent error, or one that would outlive ``max_age``)."""
        if not error.transient:
            return None
        delay = self.delay(error, attempt, rng)
        return delay if age + delay <= max_age else None

    def next_delay(self, error: DeliveryError, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait before trying again, or ``None`` to stop trying.

        ``elapsed`` is the time spent so far, calls included.
        """
        if not error.transient or attempt >= self.max_attempts:
            return None
        delay = self.delay(error, attempt)
        if elapsed + delay > self.budget:
            return None
        return delay
