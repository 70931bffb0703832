"""The JSON:API bodies sent to Klaviyo (design.md §2).

Pure functions from a :class:`~klaviyo_middleware.model.submission.Submission` to
request bodies, kept apart from HTTP so the tests can validate every one of
them against Klaviyo's OpenAPI request schemas.
"""

from __future__ import annotations

from typing import Any

from klaviyo_middleware.model.profile_order import identity
from klaviyo_middleware.model.submission import Event, Submission


def profile_import(submission: Submission) -> dict[str, Any]:
    """``POST /api/profile-import``: create or update the profile."""
    return {"data": profile_object(submission)}


def subscribe(submission: Submission, list_id: str) -> dict[str, Any]:
    """``POST /api/profile-subscription-bulk-create-jobs`` for one list.

    Whether Klaviyo sends a confirmation is the list's own setting.
    """
    return bulk_subscribe([subscriber(submission)], list_id, submission.custom_source)


def subscriber(submission: Submission) -> dict[str, Any]:
    """The person and the channels they consent to: email when the form
    gave an address, SMS when validation decided so (``sms_consent``)."""
    attributes: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    email = submission.profile.get("email")
    if email:
        attributes["email"] = email
        channels["email"] = {"marketing": {"consent": "SUBSCRIBED"}}
    if submission.sms_consent and submission.profile.get("phone_number"):
        attributes["phone_number"] = submission.profile["phone_number"]
        channels["sms"] = {"marketing": {"consent": "SUBSCRIBED"}}
    attributes["subscriptions"] = channels
    return {"type": "profile", "attributes": attributes}


def add_to_list(profile_ids: list[str]) -> dict[str, Any]:
    """``POST /api/lists/{id}/relationships/profiles``: membership without consent."""
    return {"data": [{"type": "profile", "id": profile_id} for profile_id in profile_ids]}


def event(submission: Submission, event: Event) -> dict[str, Any]:
    """``POST /api/events`` naming the person and with a ``unique_id`` always set.

    The profile step has already written the person's attributes; the event
    names them only, so that an event sent late can never write back
    attributes a newer submission has changed.
    """
    attributes = event_attributes(submission, event)
    attributes["profile"] = {"data": identity_object(submission)}
    return {"data": {"type": "event", "attributes": attributes}}


def event_attributes(submission: Submission, event: Event) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "properties": dict(event.properties),
        "metric": {"data": {"type": "metric", "attributes": {"name": event.name}}},
        "time": event.time or submission.submitted_at,
        "unique_id": event.unique_id,
    }
    if event.value is not None:
        attributes["value"] = event.value
    if event.value_currency is not None:
        attributes["value_currency"] = event.value_currency
    return attributes


def profile_object(submission: Submission) -> dict[str, Any]:
    return {"type": "profile", "attributes": dict(submission.profile)}


def identity_object(submission: Submission) -> dict[str, Any]:
    """A profile object that only names the person (see :func:`event`)."""
    return {"type": "profile", "attributes": identity(submission.profile)}


# -- the bulk endpoints, for a round of many (design.md §2) ----------------------


def bulk_profile_import(profiles: list[dict[str, Any]], list_ids: list[str]) -> dict[str, Any]:
    """``POST /api/profile-bulk-import-jobs``; the lists get membership, not consent."""
    body: dict[str, Any] = {
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": profiles}},
        }
    }
    if list_ids:
        body["data"]["relationships"] = {
            "lists": {"data": [{"type": "list", "id": list_id} for list_id in list_ids]}
        }
    return body


def bulk_subscribe(
    subscribers: list[dict[str, Any]], list_id: str, custom_source: str | None
) -> dict[str, Any]:
    """One bulk subscribe job for many people on one list."""
    attributes: dict[str, Any] = {"profiles": {"data": subscribers}}
    if custom_source:
        attributes["custom_source"] = custom_source
    return {
        "data": {
            "type": "profile-subscription-bulk-create-job",
            "attributes": attributes,
            "relationships": {"list": {"data": {"type": "list", "id": list_id}}},
        }
    }


def bulk_event_item(submission: Submission, event: Event) -> dict[str, Any]:
    """One person and their event, as an item of an event bulk job."""
    return {
        "type": "event-bulk-create",
        "attributes": {
            "profile": {"data": identity_object(submission)},
            "events": {
                "data": [{"type": "event", "attributes": event_attributes(submission, event)}]
            },
        },
    }


def bulk_events(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``POST /api/event-bulk-create-jobs``."""
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {"events-bulk-create": {"data": items}},
        }
    }
