"""A validated form submission: the unit of work handed to a delivery backend.

It is plain data (JSON-serialisable through :meth:`Submission.to_dict`) so
that a durable spool or a task queue can store it and a worker in another
process can deliver it.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Final, Literal

# What a submission asks for: a profile only, or the profile, lists and event.
Action = Literal["identify", "updateProfile"]
IDENTIFY: Final = "identify"
UPDATE_PROFILE: Final = "updateProfile"


_last_stamp = 0
_stamp_lock = threading.Lock()


def acceptance_stamp() -> int:
    """Microseconds since the epoch, strictly increasing within a process:
    the order in which submissions were accepted.

    Across processes and machines it is the wall clock's order, which is what
    a person's successive form posts (seconds apart) need; microseconds keep
    it exact in Redis's Lua, whose numbers are doubles.
    """
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(_last_stamp + 1, int(time.time() * 1_000_000))
        return _last_stamp


@dataclass
class Event:
    """What ``event[...]`` asked Klaviyo to record."""

    name: str
    unique_id: str
    properties: dict[str, Any] = field(default_factory=dict)
    value: int | float | None = None
    value_currency: str | None = None
    # ISO 8601 from event[timestamp]; None means the submission time.
    time: str | None = None


@dataclass
class Submission:
    """Everything needed to send one form post to Klaviyo.

    ``profile`` holds Klaviyo profile attributes (``email``, ``location``,
    ``properties`` …) exactly as they will be sent; hooks may edit it and
    ``event.properties`` before the submission is queued.
    """

    action: Action
    profile: dict[str, Any]
    lists: list[str] = field(default_factory=list)
    confirm_opt_in: bool = True
    event: Event | None = None
    custom_source: str | None = None
    # Subscribe the phone number to SMS marketing too (docs/forms.md, "SMS" under "Forms").
    sms_consent: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    submitted_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    # When it was accepted (see acceptance_stamp): a person's profile is
    # written in this order, whatever order delivery happens in.
    accepted_at: int = field(default_factory=acceptance_stamp)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Submission:
        values = dict(data)
        # Stored under its earlier name by a process of an older version.
        if "accepted" in values:
            values.setdefault("accepted_at", values.pop("accepted"))
        # Queued before acceptance stamps existed: older than anything stamped.
        values.setdefault("accepted_at", 0)
        event = values.pop("event", None)
        return cls(event=Event(**event) if event else None, **values)

    def person_keys(self) -> list[str]:
        """What identifies the person: each of email (any case), phone number
        and external id given. Two submissions sharing one are about the same
        person, and their profiles are written in acceptance order."""
        return person_keys(self.profile)

    def is_about(self, email: str | None = None, phone_number: str | None = None) -> bool:
        """Whether this submission names the person (email in any case, or the
        E.164 phone number): what an erasure request removes."""
        return is_about(self.to_dict(), email, phone_number)

    def __repr__(self) -> str:
        # Personal data stays out of reprs, which end up in logs and tracebacks.
        return f"<Submission {self.id} {self.action} lists={len(self.lists)}>"


def person_keys(profile: dict[str, Any]) -> list[str]:
    """:meth:`Submission.person_keys` of a profile."""
    keys = []
    for name in ("email", "phone_number", "external_id"):
        value = profile.get(name)
        if isinstance(value, (str, int)) and str(value):
            text = str(value).lower() if name == "email" else str(value)
            keys.append(f"{name}:{text}")
    return keys


def is_about(data: dict[str, Any], email: str | None, phone_number: str | None) -> bool:
    """:meth:`Submission.is_about` for a submission stored as a dict."""
    profile = data.get("profile") or {}
    given = str(profile.get("email") or "")
    return bool((email and given.lower() == email.lower())
                or (phone_number and profile.get("phone_number") == phone_number))
