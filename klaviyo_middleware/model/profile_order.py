"""A person's latest submission wins: which attributes a profile import may still send.

Klaviyo's profile import updates only the attributes it is given (and, inside
``properties`` and ``location``, only the keys given). So sending a person's
submissions in acceptance order gives each attribute the value of the latest
submission that set it. Delivery cannot always keep that order — a retry, a
bulk job Klaviyo processes later, a Celery worker that picked up the later
one first — so every store keeps, per person, *marks*: for each attribute
path, the acceptance stamp of the newest submission that has sent it. A
submission then sends only the attributes no newer submission has sent:
the result is the one the in-order sequence gives, whatever order the calls
went in (docs/design.md, "Per-person order").

Two submissions are about the same person when they share an email address
(any case), a phone number or an external id. The stores see people only as
:func:`person_hashes` — salted with the account, so that the tables that order
deliveries hold no address in clear.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

from klaviyo_middleware.model.submission import Submission, person_keys

IDENTIFIERS = ("email", "phone_number", "external_id")
# Attributes Klaviyo merges key by key rather than replacing whole.
MERGED = ("location", "properties")
# Joins a merged attribute and its key in a path ("properties" SEP "color").
SEP = "\x1f"

# path → the acceptance stamp of the newest submission that sent it.
Marks = dict[str, int]


@dataclass
class Turn:
    """A store's answer to "may this submission send its profile now?"."""

    # Seconds until it may: another submission about the person is sending
    # one right now. 0: go.
    wait: float = 0.0
    # What newer submissions about the person have sent.
    marks: Marks = field(default_factory=dict)


def attribute_paths(profile: dict[str, Any]) -> list[str]:
    """Every attribute path a profile import of ``profile`` writes."""
    paths: list[str] = []
    for name, value in profile.items():
        if name in MERGED and isinstance(value, dict):
            paths.extend(f"{name}{SEP}{key}" for key in value)
        else:
            paths.append(name)
    return paths


def person_hashes(account: str, profile: dict[str, Any]) -> list[str]:
    """The keys of the person ``profile`` names, as the stores hold them:
    hashed, salted with the account."""
    return [hashlib.sha256(f"{account}\n{key}".encode()).hexdigest()[:32]
            for key in person_keys(profile)]


def newest(*marks: Marks) -> Marks:
    """Marks merged: for each path, the newest stamp."""
    merged: Marks = {}
    for each in marks:
        for path, stamp in each.items():
            if stamp > merged.get(path, -1):
                merged[path] = stamp
    return merged


def still_ours(profile: dict[str, Any], marks: Marks, accepted_at: int) -> dict[str, Any]:
    """``profile`` without the attributes a newer submission has sent.

    The first identifier given (email, else phone number, else external id)
    always stays, so that Klaviyo finds the profile; the others go like any
    attribute, so a phone number changed since is not changed back.
    """
    anchor = _anchor(profile)
    kept: dict[str, Any] = {}
    for name, value in profile.items():
        if name in MERGED and isinstance(value, dict):
            inner = {key: copy.deepcopy(item) for key, item in value.items()
                     if marks.get(f"{name}{SEP}{key}", -1) < accepted_at}
            if inner:
                kept[name] = inner
        elif name == anchor or marks.get(name, -1) < accepted_at:
            kept[name] = copy.deepcopy(value)
    return kept


def identity(profile: dict[str, Any]) -> dict[str, Any]:
    """Just enough to find the person's profile: its first identifier.

    What a call sends when it must name the person but has no news about
    them (an event, a list membership after the profile is in): writing
    nothing else, it cannot undo a newer submission's attributes."""
    anchor = _anchor(profile)
    return {anchor: profile[anchor]} if anchor else {}


def _anchor(profile: dict[str, Any]) -> str | None:
    """The identifier Klaviyo finds the profile by: email, else phone, else external id."""
    return next((name for name in IDENTIFIERS if profile.get(name)), None)


def only_identity(profile: dict[str, Any]) -> bool:
    """Whether ``profile`` names the person and says nothing else."""
    return all(name in IDENTIFIERS for name in profile)


def order_in_round(items: list[tuple[Submission, Marks]]) -> dict[str, dict[str, Any]]:
    """What each submission of one bulk round may send, by id.

    Profiles in one import job are processed in no promised order, so an
    attribute two submissions about one person both set is sent only by the
    newer one; each also leaves out what a newer one has already sent
    (its stored marks).
    """
    by_person: dict[str, Marks] = {}
    allowed: dict[str, dict[str, Any]] = {}
    for submission, stored in sorted(items, key=lambda pair: -pair[0].accepted_at):
        keys = submission.person_keys()
        later = newest(stored, *(by_person.get(key, {}) for key in keys))
        allowed[submission.id] = still_ours(submission.profile, later, submission.accepted_at)
        mine = dict.fromkeys(attribute_paths(submission.profile), submission.accepted_at)
        for key in keys:
            by_person[key] = newest(by_person.get(key, {}), mine)
    return allowed


__all__ = ["Marks", "Turn", "attribute_paths", "identity", "newest", "only_identity",
           "order_in_round", "person_hashes", "person_keys", "still_ours"]
