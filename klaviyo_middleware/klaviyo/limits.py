"""Klaviyo's published per-endpoint rate limits (design.md §4).

The numbers are the ``x-klaviyo-ratelimit`` of each operation in Klaviyo's
OpenAPI spec for the pinned revision (a test checks them against it). RateLimits
are per account and shared by every key and integration on it, so by default
a site uses only ``share`` of them and leaves headroom for the rest.
"""

from __future__ import annotations

from typing import Final

from klaviyo_middleware.klaviyo.steps import EVENT_STEP, PROFILE_STEP

RateLimits = tuple[tuple[float, int], ...]

# endpoint → ((window seconds, calls), ...): burst per second, steady per minute.
ENDPOINT_LIMITS: Final[dict[str, RateLimits]] = {
    "profile-import": ((1.0, 75), (60.0, 750)),
    "subscribe": ((1.0, 75), (60.0, 750)),
    "add-to-list": ((1.0, 10), (60.0, 150)),
    "events": ((1.0, 350), (60.0, 3500)),
    "profile-bulk-import": ((1.0, 10), (60.0, 150)),
    "event-bulk-create": ((1.0, 10), (60.0, 150)),
    "bulk-import-job": ((1.0, 10), (60.0, 150)),
    "bulk-import-errors": ((1.0, 10), (60.0, 150)),
}

# The operation each endpoint name stands for, as the spec spells it.
ENDPOINT_OPERATIONS: Final[dict[str, tuple[str, str]]] = {
    "profile-import": ("POST", "/api/profile-import"),
    "subscribe": ("POST", "/api/profile-subscription-bulk-create-jobs"),
    "add-to-list": ("POST", "/api/lists/{id}/relationships/profiles"),
    "events": ("POST", "/api/events"),
    "profile-bulk-import": ("POST", "/api/profile-bulk-import-jobs"),
    "event-bulk-create": ("POST", "/api/event-bulk-create-jobs"),
    "bulk-import-job": ("GET", "/api/profile-bulk-import-jobs/{job_id}"),
    "bulk-import-errors": ("GET", "/api/profile-bulk-import-jobs/{id}/import-errors"),
}

_STEP_ENDPOINTS: Final[dict[str, str]] = {
    PROFILE_STEP: "profile-import",
    "subscribe": "subscribe",
    "add": "add-to-list",
    EVENT_STEP: "events",
}


def endpoint_for(step: str) -> str:
    return _STEP_ENDPOINTS[step.split(":", 1)[0]]


def scaled(limits: RateLimits, share: float) -> RateLimits:
    """``limits`` cut to ``share`` of each allowance, never below one call."""
    return tuple((window, max(1, int(calls * share))) for window, calls in limits)
