"""Warnings a site needs once, not on every post.

A form with a leftover field (``confirmOptIn=0``) or a hidden ``action``
the middleware does not act on is posted by every visitor; the operator
needs to read about it once per form, not once per visitor. Keys are
remembered per process, and only up to a bound, so that posts naming ever
new paths cannot grow memory: past the bound a warning is simply repeated.
"""

from __future__ import annotations

import logging
import threading

# Far more forms than any site has; a few hundred KiB at most.
MAX_KEYS = 1024

_said: set[tuple[str, ...]] = set()
_lock = threading.Lock()


def warn_once(log: logging.Logger, key: tuple[str, ...], message: str, *args: object) -> None:
    """Log ``message % args`` as a warning on ``log`` the first time ``key`` is seen."""
    say_once(log, logging.WARNING, key, message, *args)


def say_once(log: logging.Logger, level: int, key: tuple[str, ...], message: str,
             *args: object) -> None:
    """Log ``message % args`` at ``level`` on ``log`` the first time ``key`` is seen."""
    if first_time(key):
        log.log(level, message, *args)


def first_time(key: tuple[str, ...]) -> bool:
    """Whether ``key`` is new to this process (and remember it)."""
    with _lock:
        if key in _said:
            return False
        if len(_said) < MAX_KEYS:
            _said.add(key)
    return True


def forget_all() -> None:
    """Start afresh (tests; a long-lived process after fixing its forms)."""
    with _lock:
        _said.clear()
