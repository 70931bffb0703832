"""What Klaviyo ends up holding, in the shapes bulk and single deliveries
are compared in."""

from __future__ import annotations

from collections import Counter
from typing import Any

from support.klaviyo_fake import MockedKlaviyo


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
