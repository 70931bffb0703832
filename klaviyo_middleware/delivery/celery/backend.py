"""``delivery="celery"``: the web side of Celery delivery — enqueue a task."""

from __future__ import annotations

from typing import Any

from klaviyo_middleware.delivery.protocol import Outcome
from klaviyo_middleware.klaviyo.client import KlaviyoError
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)


class CeleryDelivery:
    """Enqueue one Celery task per submission (``delivery="celery"``).

    The visitor waits only for the broker to take the task; if the broker
    cannot, the visitor is asked to try again (nothing is silently dropped).
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
        self.ledger = Ledger(broker) if wants_ledger(broker) else None

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
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
            )
        except Exception as exc:
            log.error("klaviyo_middleware: could not enqueue %s: %s", submission.id,
                      type(exc).__name__)
            self._forget(submission.id)
            return Outcome(accepted=False, error=KlaviyoError("broker unavailable",
                                                              transient=True))
        return Outcome(accepted=True, queued=True)

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
        if self.ledger is not None:
            self.ledger.redis.close()
        # Close broker connections of an app we made; a site's own app is its own.
        if self._owns_app:
            self.app.close()
