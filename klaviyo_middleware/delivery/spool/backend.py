"""``delivery="spool"`` (the default): commit to the spool, answer at once,
deliver in the background."""

from __future__ import annotations

import sqlite3

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.protocol import Outcome
from klaviyo_middleware.delivery.spool.intake import SpoolFull
from klaviyo_middleware.delivery.spool.sender import SenderOptions, SpoolSender
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.errors import DeliveryError
from klaviyo_middleware.klaviyo.client import KlaviyoClient, unserialisable
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)


class SpoolDelivery:
    """Commit to the spool, answer at once, deliver in the background."""

    def __init__(
        self,
        spool: Spool,
        client: KlaviyoClient,
        hooks: Hooks,
        options: SenderOptions | None = None,
    ) -> None:
        self.spool = spool
        spool.prepare_intakes()
        self.sender = SpoolSender(spool, client, hooks, options)
        # Started now rather than at the first submission, so that a
        # restarted process delivers what an earlier one left in the spool.
        self.sender.ensure_running()

    def submit(self, submission: Submission) -> Outcome:
        try:
            self.spool.enqueue(submission)
        except SpoolFull as exc:
            log.error("klaviyo_middleware: refusing submission %s: %s", submission.id, exc)
            return Outcome(accepted=False, error=DeliveryError(str(exc), transient=True))
        except (sqlite3.Error, OSError) as exc:
            # OSError: this process's intake could not be created (a full
            # disk, a directory made read-only under a running site).
            log.error("klaviyo_middleware: could not spool %s: %r", submission.id, exc)
            return Outcome(accepted=False, error=DeliveryError("spool unavailable", transient=True))
        except (TypeError, ValueError) as exc:
            # Only a before_send hook can put a value JSON cannot hold into a
            # submission; trying again would not help.
            log.error("klaviyo_middleware: submission %s cannot be stored: %s",
                      submission.id, type(exc).__name__)
            return Outcome(accepted=False, error=unserialisable(exc))
        self.sender.ensure_running()
        self.sender.notify()
        return Outcome(accepted=True, queued=True)

    def flush(self, timeout: float | None = None) -> bool:
        return self.sender.flush(timeout)

    def close(self) -> None:
        self.sender.close()
