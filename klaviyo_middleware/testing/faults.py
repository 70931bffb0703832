"""Klaviyo's rate limits and injected faults, for the fake Klaviyo.

Rate limits use Klaviyo's own algorithm (fixed one-second and one-minute
windows per endpoint, design.md §4) with its published numbers, so a
client that overruns them gets the same 429 and ``Retry-After`` it would
get in production.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from klaviyo_middleware.klaviyo.limits import ENDPOINT_LIMITS, RateLimits
from klaviyo_middleware.testing.checks import ApiError

# GET endpoints we serve are in the L tier.
READ_LIMITS: RateLimits = ((1.0, 75), (60.0, 750))


@dataclass
class _Scripted:
    status: int
    retry_after: float | None


@dataclass
class Faults:
    """Failures to inject: a rate of 5xx answers, latency, outage windows."""

    error_rate: float = 0.0
    latency: float = 0.0
    # (start, end) pairs in time.time() seconds during which every call gets 503.
    outages: list[tuple[float, float]] = field(default_factory=list)
    seed: int | None = None
    _scripted: dict[str, deque[_Scripted]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - fault injection, not security

    def fail_next(self, path: str, status: int = 503, times: int = 1,
                  retry_after: float | None = None) -> None:
        """Answer the next ``times`` requests whose path matches ``path`` with ``status``."""
        with self._lock:
            queue = self._scripted.setdefault(path, deque())
            queue.extend(_Scripted(status, retry_after) for _ in range(times))

    def outage(self, seconds: float, start: float | None = None) -> None:
        begin = time.time() if start is None else start
        self.outages.append((begin, begin + seconds))

    def apply(self, path: str) -> None:
        """Sleep for the latency, then raise the failure due for this request, if any."""
        if self.latency:
            time.sleep(self.latency)
        now = time.time()
        if any(start <= now < end for start, end in self.outages):
            raise ApiError(503, "error", "Service unavailable (injected outage).")
        with self._lock:
            for pattern, queue in self._scripted.items():
                if queue and re.fullmatch(pattern, path):
                    scripted = queue.popleft()
                    headers = {}
                    if scripted.retry_after is not None:
                        headers["Retry-After"] = str(math.ceil(scripted.retry_after))
                    code = "throttled" if scripted.status == 429 else "error"
                    raise ApiError(scripted.status, code, "Injected failure.", headers=headers)
            failing = self.error_rate and self._rng.random() < self.error_rate
        if failing:
            raise ApiError(503, "error", "Service unavailable (injected).")


class RateLimiter:
    """Fixed windows per endpoint, like Klaviyo's."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._windows: dict[tuple[str, float], tuple[float, int]] = {}
        self._lock = threading.Lock()
        self.throttled = 0

    def check(self, endpoint: str | None) -> None:
        if not self.enabled:
            return
        limits = ENDPOINT_LIMITS.get(endpoint or "", READ_LIMITS)
        now = time.time()
        with self._lock:
            for window, limit in limits:
                start = math.floor(now / window) * window
                current_start, count = self._windows.get((endpoint or "read", window), (start, 0))
                if current_start != start:
                    count = 0
                if count >= limit:
                    self.throttled += 1
                    wait = max(1, math.ceil(start + window - now))
                    raise ApiError(
                        429, "throttled",
                        f"Request was throttled. Expected available in {wait} second"
                        f"{'s' if wait != 1 else ''}.",
                        "/data", headers={"Retry-After": str(wait)},
                    )
            for window, _ in limits:
                start = math.floor(now / window) * window
                current_start, count = self._windows.get((endpoint or "read", window), (start, 0))
                self._windows[(endpoint or "read", window)] = (
                    start, (count if current_start == start else 0) + 1)
