"""What every delivery backend offers the middleware: :class:`Delivery`, and
the :class:`Outcome` of handing it a submission.

Backends live beside this module — ``sync``, ``spool/`` and ``celery/`` —
and :func:`klaviyo_middleware.delivery.factory.build_delivery` picks one from
the settings. A new backend implements these three methods and gets a line
in the factory (docs/design.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from klaviyo_middleware.errors import DeliveryError
from klaviyo_middleware.model.submission import Submission


@dataclass
class Outcome:
    """What a backend did with a submission.

    ``accepted`` means the submission is safe: delivered, or durably queued
    for delivery. When it is not, ``error`` says why. ``cancelled``: a
    ``before_send`` hook kept it from delivery (the visitor is still thanked).
    """

    accepted: bool
    delivered: bool = False
    queued: bool = False
    profile_id: str | None = None
    error: DeliveryError | None = None
    cancelled: bool = False


# What the middleware records when a before_send hook cancels a submission.
CANCELLED = Outcome(accepted=True, cancelled=True)


class Delivery(Protocol):
    def submit(self, submission: Submission) -> Outcome: ...

    def flush(self, timeout: float | None = None) -> bool: ...

    def close(self) -> None: ...
