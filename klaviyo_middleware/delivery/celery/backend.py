"""``delivery="celery"``: the web side of Celery delivery — enqueue a task."""

from __future__ import annotations

import threading
from typing import Any

from kombu.utils.url import maybe_sanitize_url

from klaviyo_middleware.delivery.protocol import Outcome
from klaviyo_middleware.errors import DeliveryError
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

# Seconds any one broker operation on the request path may take: connecting,
# a command's reply. A broker that accepts connections and never answers
# would otherwise hold each visitor for the client libraries' defaults
# (10 s with redis-py 8, forever with older ones). With one retry of the
# publish and the ledger's two calls, a visitor waits about 2 s at most,
# then gets 503 and "try again" (docs/delivery.md).
BROKER_TIMEOUT = 0.5


class CeleryDelivery:
    """Enqueue one Celery task per submission (``delivery="celery"``).

    The visitor waits only for the broker to take the task, each broker
    operation bounded by :data:`BROKER_TIMEOUT`; if the broker cannot take
    it, the visitor is asked to try again (503: nothing is silently dropped,
    and nothing the visitor was told failed is sent later).
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
        # For log lines: kombu's own rendering, the password masked.
        self.broker_address = maybe_sanitize_url(broker) or "(no broker_url set)"
        self.ledger = Ledger(broker, timeout=BROKER_TIMEOUT) if wants_ledger(broker) else None
        # One publishing connection per request thread, with short socket
        # timeouts of its own: a site's app (also its workers' app) keeps
        # its own settings.
        self._local = threading.local()
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()

    def submit(self, submission: Submission) -> Outcome:
        payload = submission.to_dict()
        try:
            if self.ledger is not None:
                self.ledger.record(submission.id, payload)
            self.task.apply_async(
                args=[payload],
                # The task is named after its submission, so that the
                # ledger's sweeper can see it in the broker (ledger.py).
                task_id=submission.id,
                connection=self._connection(),
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2},
            )
        except Exception as exc:
            self._drop_connection()
            log.error("klaviyo_middleware: could not enqueue %s: the broker at %s did not "
                      "take it (%s); the visitor was asked to try again (503). Is the broker "
                      "running, and is broker_url (KLAVIYO_BROKER_URL) its address?",
                      submission.id, self.broker_address, type(exc).__name__)
            self._forget(submission.id)
            return Outcome(accepted=False, error=DeliveryError("broker unavailable",
                                                              transient=True))
        return Outcome(accepted=True, queued=True)

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            options = dict(self.app.conf.broker_transport_options or {})
            url = str(self.app.conf.broker_write_url or self.app.conf.broker_url or "")
            if url.startswith(("redis://", "rediss://", "unix://")):
                options.update(socket_timeout=BROKER_TIMEOUT,
                               socket_connect_timeout=BROKER_TIMEOUT)
            elif url.startswith(("amqp://", "amqps://", "pyamqp://")):
                options.update(read_timeout=BROKER_TIMEOUT, write_timeout=BROKER_TIMEOUT)
            connection = self.app.connection_for_write(
                transport_options=options, connect_timeout=BROKER_TIMEOUT)
            self._local.connection = connection
            with self._opened_lock:
                self._opened.append(connection)
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._opened_lock:
                if connection in self._opened:
                    self._opened.remove(connection)
            _release(connection)

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
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            _release(connection)
        if self.ledger is not None:
            self.ledger.redis.close()
        # Close broker connections of an app we made; a site's own app is its own.
        if self._owns_app:
            self.app.close()


def _release(connection: Any) -> None:
    try:
        connection.release()
    except Exception:
        log.debug("klaviyo_middleware: closing a broker connection failed", exc_info=True)

