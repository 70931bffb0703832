"""A submission leased to one deliverer, with what is known of its delivery.

Every lease store (the SQLite spool, the Redis pool of a Celery fleet) hands
these out, and :class:`~klaviyo_middleware.delivery.courier.Courier` sends
them; the store, not this object, says whether the lease still holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission


@dataclass
class Leased:
    """A submission leased to one deliverer."""

    submission: Submission
    progress: Progress
    # Failed attempts so far, and when the submission was accepted (epoch).
    attempts: int
    created_at: float
    # Whether this deliverer holds the person's turn to send a profile (a
    # Redis store's hold, released once the profile is in); not stored.
    holding: bool = False
