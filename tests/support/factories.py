"""One place that makes the things tests deliver: submissions, quick sender
options, a spool drained to the end, and a recorder of delivery hooks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.import_jobs import JobFollow
from klaviyo_middleware.delivery.spool.backend import SpoolDelivery
from klaviyo_middleware.delivery.spool.sender import SenderOptions
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.errors import DeliveryError
from klaviyo_middleware.klaviyo.client import KlaviyoClient
from klaviyo_middleware.model.submission import Event, Submission

from support.klaviyo_fake import API_KEY, API_URL

ACCOUNT = account_fingerprint(API_URL, API_KEY)
# Sender options for tests: quick polls, backoffs, leases and job follows,
# so that a test waits on Klaviyo's answers, not on our patience.
FAST = SenderOptions(poll=0.05, retry_base=0.01, retry_cap=0.05, lease=5.0,
                     jobs=JobFollow(first_poll=0.05, max_poll=0.1))
_NUMBERED: Any = object()


def submission(number: int = 0, *, email: str | None = _NUMBERED, phone: str | None = None,
               properties: dict[str, Any] | None = None, **changes: Any) -> Submission:
    """Person ``number``'s update: their email, list ``L1`` and a ``Joined``
    event. ``email=None`` leaves the email out; ``properties`` makes a
    profile with more than the person's identity (one a round must import);
    ``changes`` replace any field."""
    profile: dict[str, Any] = {}
    if email is not None:
        profile["email"] = f"p{number}@example.com" if email is _NUMBERED else email
    if phone is not None:
        profile["phone_number"] = phone
    if properties is not None:
        profile["properties"] = properties
    values: dict[str, Any] = {
        "action": "updateProfile",
        "profile": profile,
        "lists": ["L1"],
        "event": Event(name="Joined", unique_id=f"u-{number}"),
    }
    values.update(changes)
    return Submission(**values)


def identify(email: str | None = None, phone: str | None = None) -> Submission:
    """An ``identify`` of one person: a profile, nothing else."""
    profile = {"email": email} if email is not None else {}
    if phone is not None:
        profile["phone_number"] = phone
    return Submission(action="identify", profile=profile)


def submissions(count: int, **changes: Any) -> list[Submission]:
    """:func:`submission` of people ``0 … count - 1``."""
    return [submission(number, **changes) for number in range(count)]


def sender_options(**changes: Any) -> SenderOptions:
    """:data:`FAST` with ``changes``."""
    return dataclasses.replace(FAST, **changes)


def spool_delivery(where: Path | Spool, *, hooks: Hooks | None = None,
                   api_url: str = API_URL, **options: Any) -> SpoolDelivery:
    """The spool backend on ``where`` (a directory, or a spool) with quick
    options; the test closes it."""
    spool = where if isinstance(where, Spool) else Spool(where / "spool.sqlite3",
                                                         account_fingerprint(api_url, API_KEY))
    return SpoolDelivery(spool, KlaviyoClient(API_KEY, api_url=api_url), hooks or Hooks(),
                         sender_options(**options))


def deliver_all(spool: Spool, *, timeout: float = 60, **options: Any) -> Spool:
    """Deliver everything in ``spool`` (or dead-letter it), then stop the sender."""
    delivery = spool_delivery(spool, **options)
    try:
        assert delivery.flush(timeout)
    finally:
        delivery.close()
    return spool


def backlog(count: int) -> list[Submission]:
    """A varied backlog: consent to one or two lists, membership without
    consent, events or not, profiles with more than an identity."""
    items = []
    for number in range(count):
        kind = number % 4
        items.append(Submission(
            action="updateProfile",
            profile={"email": f"p{number}@example.com", "first_name": f"P{number}",
                     "properties": {"n": number}},
            lists=[["A1"], ["A1", "B2"], ["C3"], []][kind],
            confirm_opt_in=kind != 2,
            event=Event(name="Ordered", unique_id=f"order-{number}", value=number,
                        properties={"sku": f"S{number}"}) if kind != 3 else None,
            custom_source="Footer",
        ))
    return items


def spooled(directory: Path, items: list[Submission], name: str = "spool.sqlite3") -> Spool:
    """A spool in ``directory`` holding ``items``."""
    spool = Spool(directory / name, ACCOUNT)
    for item in items:
        spool.enqueue(item)
    return spool


@dataclasses.dataclass
class HookRecorder:
    """What the delivery hooks were told, in order; pass :attr:`hooks`."""

    delivered: list[Submission] = dataclasses.field(default_factory=list)
    retries: list[tuple[int | None, float]] = dataclasses.field(default_factory=list)
    dead: list[tuple[Submission, DeliveryError]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.hooks = Hooks(
            on_delivered=self.delivered.append,
            on_retry=lambda sub, error, delay: self.retries.append((error.status, delay)),
            on_dead=lambda sub, error: self.dead.append((sub, error)),
        )

    @property
    def delivered_ids(self) -> list[str]:
        return [item.id for item in self.delivered]

    @property
    def dead_ids(self) -> list[str]:
        return [item.id for item, _ in self.dead]
