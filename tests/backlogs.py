"""A backlog of varied submissions and what Klaviyo ends up holding (shared by bulk tests)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from klaviyo_middleware.model.submission import Event, Submission

from klaviyo_fake import MockedKlaviyo


def backlog(count: int) -> list[Submission]:
    """A mix: consent to one or two lists, membership without consent, events or not."""
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


def state(fake: MockedKlaviyo) -> dict[str, Any]:
    return {
        "profiles": fake.profiles,
        "members": fake.members,
        "subscribed": fake.subscribed,
        "events": {uid: {**event, "profile": event["profile"]["data"]["attributes"]}
                   for uid, event in fake.events.items()},
    }


def subscriptions_sent(fake: MockedKlaviyo) -> Counter[tuple[str, str]]:
    """How often each (list, person) subscription was sent."""
    return Counter(
        (body["data"]["relationships"]["list"]["data"]["id"], profile["attributes"]["email"])
        for body in fake.bodies("/api/profile-subscription-bulk-create-jobs")
        for profile in body["data"]["attributes"]["profiles"]["data"])
