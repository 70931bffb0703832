"""The ordered Klaviyo calls for one submission, each done at most once (design.md §2).

:class:`Progress` records which steps have succeeded (and the profile id the
first one returned). A delivery that fails half-way is resumed from the same
:class:`Progress`, so a subscribe that Klaviyo accepted is never sent again:
a second one could mail the person a second confirmation. It is plain data so
that the spool can store it next to the submission.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from klaviyo_middleware.klaviyo import payloads
from klaviyo_middleware.klaviyo.client import KlaviyoClient
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import UPDATE_PROFILE, Submission

PROFILE_STEP = "profile"
EVENT_STEP = "event"




def list_step(submission: Submission, list_id: str) -> str:
    kind = "subscribe" if submission.confirm_opt_in else "add"
    return f"{kind}:{list_id}"


def plan(submission: Submission) -> list[str]:
    """Every step of a submission, in the order they must happen."""
    steps = [PROFILE_STEP]
    if submission.action == UPDATE_PROFILE:
        steps.extend(list_step(submission, list_id) for list_id in submission.lists)
        if submission.event is not None:
            steps.append(EVENT_STEP)
    return steps


def pending(submission: Submission, progress: Progress) -> Iterator[str]:
    return (step for step in plan(submission) if step not in progress.done)


def run_step(client: KlaviyoClient, submission: Submission, step: str, progress: Progress) -> None:
    """Send one step; on success record it in ``progress``. Raises KlaviyoError."""
    handler = _HANDLERS[step.split(":", 1)[0]]
    handler(client, submission, step, progress)
    progress.done.append(step)


def deliver(client: KlaviyoClient, submission: Submission, progress: Progress) -> None:
    """Send every step not yet done, in order; stops at the first failure."""
    for step in pending(submission, progress):
        run_step(client, submission, step, progress)


def _profile(client: KlaviyoClient, submission: Submission, step: str, progress: Progress) -> None:
    progress.profile_id = client.import_profile(payloads.profile_import(submission))


def _subscribe(
    client: KlaviyoClient, submission: Submission, step: str, progress: Progress
) -> None:
    client.subscribe(payloads.subscribe(submission, step.split(":", 1)[1]))


def _add(client: KlaviyoClient, submission: Submission, step: str, progress: Progress) -> None:
    if progress.profile_id is None:
        # The profile went in a bulk job (which returns no ids) or was left
        # to a newer submission: find its id by naming the person, writing
        # nothing else.
        progress.profile_id = client.import_profile(
            {"data": payloads.identity_object(submission)})
    client.add_to_list(step.split(":", 1)[1], payloads.add_to_list([progress.profile_id]))


def _event(client: KlaviyoClient, submission: Submission, step: str, progress: Progress) -> None:
    assert submission.event is not None
    client.create_event(payloads.event(submission, submission.event))


_HANDLERS: dict[str, Callable[[KlaviyoClient, Submission, str, Progress], None]] = {
    PROFILE_STEP: _profile,
    "subscribe": _subscribe,
    "add": _add,
    EVENT_STEP: _event,
}
