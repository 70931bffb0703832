"""Following profile import jobs to their end.

Klaviyo answers a profile import job with 202 and processes it later — in
seconds, sometimes minutes — and reports a profile it refuses only on the
job (``failed_count``) and in the job's ``import-errors``. So a profile sent
in a job is not delivered on the 202: the courier records the job in each
member's progress (so that a sender killed meanwhile hands the job, not the
profile, to the next one) and this module asks Klaviyo about it until it is
finished:

- ``complete``: the profiles Klaviyo refused go to the dead letters with
  Klaviyo's own error for each, the rest are delivered;
- ``cancelled``, unknown to Klaviyo (404), or still unfinished after
  :attr:`JobFollow.give_up_after`: its profiles are sent again one call
  each (an import is an upsert: sending a profile twice changes nothing).

Polls share the endpoint's rate limit with every other process of the site
and back off from :attr:`JobFollow.first_poll` to :attr:`JobFollow.max_poll`.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from klaviyo_middleware.errors import DeliveryError
from klaviyo_middleware.klaviyo.client import KlaviyoClient, KlaviyoError
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.progress import ImportJob
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

JOB_ENDPOINT = "bulk-import-job"
ERRORS_ENDPOINT = "bulk-import-errors"
_INDEX = re.compile(r"/profiles/data/(\d+)")
_IDENTIFIERS = ("email", "phone_number", "external_id")


@dataclass(frozen=True)
class JobFollow:
    """How import jobs are followed (seconds)."""

    first_poll: float = 0.5
    max_poll: float = 30.0
    give_up_after: float = 900.0


@dataclass
class JobOutcome:
    """What the followed jobs did with their members' profiles."""

    imported: list[Leased] = field(default_factory=list)
    refused: list[tuple[Leased, DeliveryError]] = field(default_factory=list)
    # Never finished, cancelled or forgotten by Klaviyo: send one call each.
    unfinished: list[Leased] = field(default_factory=list)


# (items, endpoint) → False when stopping or the leases were lost.
WaitForCapacity = Callable[[list[Leased], str], bool]
# (items, seconds) → the ids whose lease still holds for that long.
KeepLeases = Callable[[list[Leased], float], set[str]]


class JobFollower:
    def __init__(self, client: KlaviyoClient, policy: JobFollow, wait_for_capacity: WaitForCapacity,
                 keep_leases: KeepLeases, on_throttled: Callable[[DeliveryError], None],
                 stopping: threading.Event) -> None:
        self.client = client
        self.policy = policy
        self.wait_for_capacity = wait_for_capacity
        self.keep_leases = keep_leases
        self.on_throttled = on_throttled
        self.stopping = stopping

    def follow(self, items: list[Leased]) -> JobOutcome:
        """Poll the jobs of ``items`` (each with ``progress.job``) until each
        is decided. Items still undecided when stopping, or whose lease was
        lost, are in none of the outcome's lists: they stay as they are."""
        outcome = JobOutcome()
        jobs: dict[str, list[Leased]] = {}
        for item in items:
            assert item.progress.job is not None
            jobs.setdefault(item.progress.job.id, []).append(item)
        interval = {job_id: self.policy.first_poll for job_id in jobs}
        due = {job_id: _job(members).since + self.policy.first_poll
               for job_id, members in jobs.items()}
        while jobs and not self.stopping.is_set():
            now = time.time()
            for job_id in [job_id for job_id in jobs if due[job_id] <= now]:
                members = jobs[job_id]
                decided = self._poll(job_id, members, outcome)
                if decided is None:
                    return outcome  # stopping, or the leases are gone
                if decided:
                    del jobs[job_id]
                    continue
                interval[job_id] = min(self.policy.max_poll, interval[job_id] * 2)
                due[job_id] = time.time() + interval[job_id]
            if jobs:
                self._wait(jobs, min(due.values()) - time.time())
        return outcome

    def _poll(self, job_id: str, members: list[Leased], outcome: JobOutcome) -> bool | None:
        """``True`` once the job is decided (``outcome`` updated), ``False``
        to ask again later, ``None`` to stop."""
        if time.time() - _job(members).since > self.policy.give_up_after:
            log.warning("klaviyo_middleware: import job %s unfinished after %gs; sending its "
                        "%d profiles one by one", job_id, self.policy.give_up_after, len(members))
            outcome.unfinished.extend(members)
            return True
        try:
            if not self.wait_for_capacity(members, JOB_ENDPOINT):
                return None
            status = self.client.import_job(job_id)
            if status["status"] == "complete":
                errors: list[dict[str, Any]] = []
                if status.get("failed_count"):
                    if not self.wait_for_capacity(members, ERRORS_ENDPOINT):
                        return None
                    errors = self.client.import_errors(job_id)
                self._decide(job_id, members, status.get("failed_count", 0), errors, outcome)
                return True
        except Exception as exc:  # an odd answer fails this job alone, never the round
            error = exc if isinstance(exc, DeliveryError) else DeliveryError(
                f"an answer about import job {job_id} could not be read "
                f"({type(exc).__name__})", code="unexpected", transient=True)
            if not isinstance(exc, DeliveryError):
                log.warning("klaviyo_middleware: %s; asking again", error)
            if error.status == 429:
                self.on_throttled(error)
            if not error.transient:
                log.warning("klaviyo_middleware: could not follow import job %s (%s); sending "
                            "its %d profiles one by one", job_id, error, len(members))
                outcome.unfinished.extend(members)
                return True
            return False
        if status["status"] == "cancelled":
            log.warning("klaviyo_middleware: import job %s was cancelled; sending its %d "
                        "profiles one by one", job_id, len(members))
            outcome.unfinished.extend(members)
            return True
        return False

    def _decide(self, job_id: str, members: list[Leased], failed: int,
                errors: list[dict[str, Any]], outcome: JobOutcome) -> None:
        refused: dict[str, DeliveryError] = {}
        # Failures counted but not listed, then listed but naming nobody here.
        unnamed = max(0, failed - len(errors))
        for error in errors:
            blamed = _blamed(error, members)
            unnamed += not blamed
            for item in blamed:
                refused[item.submission.id] = _error(job_id, error)
        if unnamed > 0:
            # Klaviyo counted failures it did not (or not recognisably)
            # list: nobody can tell which profiles they were, so every
            # profile not named is sent again one by one.
            log.warning("klaviyo_middleware: import job %s reported %d failures it could not "
                        "attribute; sending its other profiles one by one", job_id, failed)
            outcome.unfinished.extend(item for item in members
                                      if item.submission.id not in refused)
        else:
            outcome.imported.extend(item for item in members
                                    if item.submission.id not in refused)
        outcome.refused.extend((item, refused[item.submission.id]) for item in members
                               if item.submission.id in refused)

    def _wait(self, jobs: dict[str, list[Leased]], seconds: float) -> None:
        """Sleep until the next poll, keeping the leases meanwhile; members
        whose lease was lost are dropped (another sender has them)."""
        seconds = max(0.0, seconds)
        everyone = [item for members in jobs.values() for item in members]
        kept = self.keep_leases(everyone, seconds)
        for job_id in list(jobs):
            jobs[job_id] = [item for item in jobs[job_id] if item.submission.id in kept]
            if not jobs[job_id]:
                del jobs[job_id]
        if jobs:
            self.stopping.wait(seconds)


def _job(members: list[Leased]) -> ImportJob:
    job = members[0].progress.job
    assert job is not None
    return job


def _pointer(error: dict[str, Any]) -> str | None:
    """The JSON pointer an import error names, if it is where Klaviyo puts it."""
    source = error.get("source")
    pointer = source.get("pointer") if isinstance(source, dict) else None
    return pointer if isinstance(pointer, str) else None


def _blamed(error: dict[str, Any], members: list[Leased]) -> list[Leased]:
    """The members an import error names: by its pointer's position in the
    request, else by the identifiers of the profile it quotes."""
    pointer = _pointer(error) or ""
    found = _INDEX.search(pointer)
    if found is not None:
        index = int(found.group(1))
        return [item for item in members
                if item.progress.job is not None and item.progress.job.index == index]
    quoted = error.get("original_payload") or {}
    attributes = quoted.get("attributes", quoted) if isinstance(quoted, dict) else {}
    if not isinstance(attributes, dict):
        return []
    return [item for item in members if any(
        attributes.get(name) and attributes.get(name) == item.submission.profile.get(name)
        for name in _IDENTIFIERS)]


def _error(job_id: str, error: dict[str, Any]) -> KlaviyoError:
    """A permanent error from Klaviyo's report on one profile of a job."""
    pointer = _pointer(error)
    code = error.get("code") if isinstance(error.get("code"), str) else None
    return KlaviyoError(
        f"Klaviyo refused the profile in import job {job_id}" + (f": {code}" if code else ""),
        status=400,
        code=code,
        detail=error.get("detail") if isinstance(error.get("detail"), str) else None,
        pointer=pointer,
        transient=False,
    )
