"""Sending a round of submissions through Klaviyo's bulk endpoints (design.md §4).

Whenever more than one submission is due, delivery sends them together:
one call per step overruns the single endpoints' limits at steady traffic,
and a backlog would take hours against Klaviyo's rate limits (10,000
submissions with a list and an event are 30,000 calls). The same work fits
in a handful of bulk jobs:

- profiles — and list membership without consent — in
  ``profile-bulk-import-jobs`` (≤ 10,000 profiles, ≤ 5 MB), one job per set
  of lists, since a job's list relationship applies to all its profiles;
- subscriptions with consent in ``profile-subscription-bulk-create-jobs``
  (≤ 1,000 people per list);
- events in ``event-bulk-create-jobs`` (≤ 1,000, ≤ 5 MB), each with its
  ``unique_id``, so Klaviyo still keeps one event per submission.

The result in Klaviyo is the one the single calls give; only the number of
calls differs. A profile that only names the person (a newsletter form's
email) gets no import of its own when the round's subscription or event
names them with every identifier: Klaviyo creates the person from either
(:func:`carried_by`), so a steady trickle of such forms costs two calls a
round, not four. :func:`plan` only builds the calls; the courier sends them and
records, per submission, which steps each call completed — for an import
job, once Klaviyo has processed it (``follow``; see
:mod:`klaviyo_middleware.delivery.import_jobs`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from klaviyo_middleware.klaviyo import payloads
from klaviyo_middleware.klaviyo.client import KlaviyoClient
from klaviyo_middleware.klaviyo.steps import EVENT_STEP, PROFILE_STEP, pending
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.profile_order import identity, only_identity

PROFILES_PER_IMPORT = 10_000
PEOPLE_PER_SUBSCRIBE = 1_000
EVENTS_PER_JOB = 1_000
# Klaviyo's payload limit is 5 MB; the margin covers the job's envelope.
MAX_BODY_BYTES = 4_500_000


@dataclass
class BulkCall:
    """One bulk request and the steps it completes for each submission in it."""

    endpoint: str
    # Returns the job's id when the call starts a job to follow.
    send: Callable[[KlaviyoClient], str | None]
    members: list[tuple[Leased, list[str]]] = field(default_factory=list)
    # Klaviyo processes the job later: its steps are done when it is.
    follow: bool = False


def stages() -> tuple[Callable[[list[Leased]], list[BulkCall]], ...]:
    """Planners for the calls of each stage, in the order of the steps.

    Each stage is planned only when the one before has been sent, so that a
    submission whose earlier step failed is left out of the later bodies.
    """
    return (profile_imports, subscriptions, events)


def plan(items: list[Leased]) -> list[BulkCall]:
    """Every bulk call for ``items``, as if each stage succeeds."""
    return [call for stage in stages() for call in stage(items)]


def import_steps(item: Leased) -> list[str]:
    """The steps a profile import job does for ``item``: its profile and the
    lists it joins without consent."""
    return [step for step in pending(item.submission, item.progress)
            if step == PROFILE_STEP or step.startswith("add:")]


def carried_by(item: Leased) -> str | None:
    """The later step of ``item`` that creates its person in Klaviyo when
    its profile has nothing to say but who they are; ``None`` when the
    profile needs an import of its own.

    It needs one when it carries attributes (they are written in per-person
    order), when a list is joined without consent (that takes the profile's
    id), or when no later step names every identifier it has: a subscription
    names the email, and the phone only with SMS consent; an event names
    one (:func:`~klaviyo_middleware.model.profile_order.identity`).
    """
    if item.progress.job is not None or not only_identity(item.submission.profile):
        return None
    todo = list(pending(item.submission, item.progress))
    if PROFILE_STEP not in todo or any(step.startswith("add:") for step in todo):
        return None
    profile = item.submission.profile
    for step in todo:
        if step == EVENT_STEP and identity(profile) == profile:
            return step
        if step.startswith("subscribe:"):
            named = payloads.subscriber(item.submission)["attributes"]
            if all(name in named for name in profile):
                return step
    return None


def _with_profile(item: Leased, step: str) -> list[str]:
    """The steps a call doing ``step`` completes: the profile too, when the
    call creates the person (:func:`carried_by`)."""
    return [PROFILE_STEP, step] if carried_by(item) == step else [step]


def profile_imports(items: list[Leased],
                    profiles: dict[str, dict[str, Any]] | None = None) -> list[BulkCall]:
    """Import jobs for the profiles of ``items``: each as ``profiles`` gives
    it (what per-person order leaves it to send), by default whole; one
    whose profile is already in only names the person, to join its lists."""
    profiles = profiles or {}
    groups: dict[tuple[str, ...], list[tuple[Leased, list[str]]]] = {}
    for item in items:
        todo = import_steps(item)
        if not todo or item.progress.job is not None or carried_by(item) is not None:
            # Nothing to import, already in a job being followed, or the
            # person is created by a later call of the round.
            continue
        # A job's lists apply to every profile in it, so people going onto
        # different lists go into different jobs.
        adds = [step for step in todo if step != PROFILE_STEP]
        lists = tuple(sorted(step.split(":", 1)[1] for step in adds))
        groups.setdefault(lists, []).append((item, [PROFILE_STEP, *adds]))
    calls = []
    for lists, members in groups.items():
        entries = [(_import_entry(item, profiles), (item, steps)) for item, steps in members]
        for chunk in _chunks(entries, PROFILES_PER_IMPORT):
            body = payloads.bulk_profile_import([obj for obj, _ in chunk], list(lists))
            calls.append(
                BulkCall("profile-bulk-import",
                         partial(KlaviyoClient.bulk_import_profiles, body=body),
                         [member for _, member in chunk], follow=True)
            )
    return calls


def _import_entry(item: Leased, profiles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if PROFILE_STEP in item.progress.done:
        return payloads.identity_object(item.submission)
    profile = profiles.get(item.submission.id, item.submission.profile)
    return {"type": "profile", "attributes": dict(profile)}


def subscriptions(items: list[Leased]) -> list[BulkCall]:
    groups: dict[tuple[str, str | None], list[tuple[Leased, list[str]]]] = {}
    for item in items:
        for step in pending(item.submission, item.progress):
            if step.startswith("subscribe:"):
                key = (step.split(":", 1)[1], item.submission.custom_source)
                groups.setdefault(key, []).append((item, _with_profile(item, step)))
    calls = []
    for (list_id, source), members in groups.items():
        entries = [(payloads.subscriber(item.submission), (item, steps))
                   for item, steps in members]
        for chunk in _chunks(entries, PEOPLE_PER_SUBSCRIBE):
            body = payloads.bulk_subscribe([obj for obj, _ in chunk], list_id, source)
            calls.append(
                BulkCall("subscribe", partial(KlaviyoClient.subscribe, body=body),
                         [member for _, member in chunk])
            )
    return calls


def events(items: list[Leased]) -> list[BulkCall]:
    entries = []
    for item in items:
        event = item.submission.event
        if event is not None and EVENT_STEP in pending(item.submission, item.progress):
            entries.append((payloads.bulk_event_item(item.submission, event),
                            (item, _with_profile(item, EVENT_STEP))))
    return [
        BulkCall(
            "event-bulk-create",
            partial(KlaviyoClient.bulk_create_events,
                    body=payloads.bulk_events([obj for obj, _ in chunk])),
            [member for _, member in chunk],
        )
        for chunk in _chunks(entries, EVENTS_PER_JOB)
    ]


Entry = tuple[dict[str, Any], tuple[Leased, list[str]]]


def _chunks(entries: list[Entry], max_count: int) -> list[list[Entry]]:
    """Split into requests within both the count and the byte limit."""
    chunks: list[list[Entry]] = []
    current: list[Entry] = []
    size = 0
    for entry in entries:
        entry_size = len(json.dumps(entry[0], separators=(",", ":"))) + 1
        if current and (len(current) >= max_count or size + entry_size > MAX_BODY_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry_size
    if current:
        chunks.append(current)
    return chunks
