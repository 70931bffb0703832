"""A watch over the whole test suite: no log record and no CLI output may show
an email address, a phone number or an API key in clear.

Every test's log records (message and traceback, at DEBUG) and every
``klaviyo-middleware spool``/``celery`` output are checked with the same
patterns the package masks with; text written while the operator asked to
see personal data (``log_personal_data=True``, ``--show-personal-data``) is
the one exception.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

from klaviyo_middleware import redact

_FORMAT = logging.Formatter("%(name)s %(levelname)s %(message)s")


def leaks(text: str) -> list[str]:
    """The lines of ``text`` that redaction would still change."""
    return [line for line in text.splitlines() if redact.redact(line) != line]


class Watch(logging.Handler):
    """Collects what the package logs that redaction missed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []
        self._found_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if redact._show_personal_data:
            return
        found = leaks(_FORMAT.format(record))
        if found:
            with self._found_lock:
                self.found.extend(found)

    def take(self) -> list[str]:
        with self._found_lock:
            found, self.found = self.found, []
        return found


class WatchedOut(io.StringIO):
    """CLI output that the watch reads once the command has run."""

    def __init__(self, target: Any, watch: Watch) -> None:
        super().__init__()
        self.target, self.watch = target, watch

    def flush_to_target(self, personal: bool) -> None:
        text = self.getvalue()
        if not personal:
            with self.watch._found_lock:
                self.watch.found.extend(leaks(text))
        self.target.write(text)
