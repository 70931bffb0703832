"""What happened, counted for whoever listens (docs/metrics.md).

The middleware, the delivery backends and the Klaviyo client report here;
:mod:`klaviyo_middleware.contrib.prometheus` listens. With nobody listening
each report is one empty-tuple loop, so sites without metrics pay nothing.
Reports carry no personal data: an action, a reason, an endpoint template,
a status.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)


class Recorder(Protocol):
    def accepted(self, action: str) -> None: ...
    def refused(self, reason: str) -> None: ...
    def delivered(self) -> None: ...
    def retried(self) -> None: ...
    def dead(self) -> None: ...
    def klaviyo_call(self, method: str, endpoint: str, status: str) -> None: ...


# Replaced, never mutated, so a report reads it without a lock.
_recorders: tuple[Recorder, ...] = ()
_change = threading.Lock()


def add_recorder(recorder: Recorder) -> None:
    global _recorders
    with _change:
        if recorder not in _recorders:
            _recorders = (*_recorders, recorder)


def remove_recorder(recorder: Recorder) -> None:
    global _recorders
    with _change:
        _recorders = tuple(each for each in _recorders if each is not recorder)


def accepted(action: str) -> None:
    """A submission was handed to delivery (the visitor was told "saved")."""
    for recorder in _recorders:
        _safely(recorder.accepted, action)


def refused(reason: str) -> None:
    """A post to an action was answered with an error (or dropped as spam)."""
    for recorder in _recorders:
        _safely(recorder.refused, reason)


def delivered() -> None:
    for recorder in _recorders:
        _safely(recorder.delivered)


def retried() -> None:
    for recorder in _recorders:
        _safely(recorder.retried)


def dead() -> None:
    for recorder in _recorders:
        _safely(recorder.dead)


def klaviyo_call(method: str, endpoint: str, status: str) -> None:
    """One HTTP call to Klaviyo: ``endpoint`` is a path template
    (``/api/lists/{id}/relationships/profiles``), ``status`` the HTTP status
    or ``timeout`` / ``unreachable``."""
    for recorder in _recorders:
        _safely(recorder.klaviyo_call, method, endpoint, status)


def _safely(report: Callable[..., None], *args: str) -> None:
    # Counting must never cost a visitor their answer or a submission its delivery.
    try:
        report(*args)
    except Exception:
        log.exception("klaviyo_middleware: a metrics recorder failed")
