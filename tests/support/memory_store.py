"""A lease store in dicts: what the courier needs, without SQLite or threads.

huey keeps a ``MemoryStorage`` beside its SQL and Redis storages for the same
reason: the courier's decisions (retry or bury, pause, postpone, follow a
person's order) can then be tested as plain calls, and the store's own
semantics stay in the store's tests. This one keeps the rules every real
store keeps (docs/design.md, "Guarantees"): a lease is the owner's until
it runs out; a submission about a person whose profile another owner is
sending is not leased; a sent profile leaves marks for older submissions;
the account's pause only grows; rate limits are sliding windows.
``tests/test_courier.py`` runs its scenarios on this store and on the spool
alike, so the two cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from klaviyo_middleware.delivery.courier import put_off_by_outage
from klaviyo_middleware.klaviyo.limits import RateLimits
from klaviyo_middleware.klaviyo.steps import PROFILE_STEP
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.profile_order import Marks, Turn, attribute_paths
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission


@dataclass
class Row:
    """A waiting submission, as a store keeps it."""

    submission: Submission
    progress: Progress = field(default_factory=Progress)
    attempts: int = 0
    created_at: float = 0.0
    due_at: float = 0.0
    owner: str | None = None
    lease_until: float = 0.0
    last_error: dict[str, Any] | None = None


@dataclass
class Dead:
    submission: Submission
    progress: Progress
    attempts: int
    error: dict[str, Any]


class MemoryStore:
    """:class:`klaviyo_middleware.delivery.courier.LeaseStore` in memory,
    plus what a sender does around it (``enqueue``, ``claim``)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.rows: dict[str, Row] = {}
        self.dead: dict[str, Dead] = {}
        self.delivered: list[str] = []
        self.paused_until = 0.0
        self.calls: dict[str, list[float]] = {}
        # person key (email, phone or external id) → path → acceptance stamp
        self.marks: dict[str, Marks] = {}

    # -- what a sender does -------------------------------------------------

    def enqueue(self, submission: Submission) -> None:
        now = self.clock()
        self.rows[submission.id] = Row(submission, created_at=now, due_at=now)

    def claim(self, owner: str, limit: int, lease: float) -> list[Leased]:
        now = self.clock()
        claimed: list[Leased] = []
        for row in sorted(self.rows.values(), key=lambda row: row.due_at):
            if len(claimed) == limit:
                break
            if row.due_at > now or row.lease_until > now or self._busy(row, owner, now):
                continue
            row.owner, row.lease_until = owner, now + lease
            claimed.append(Leased(row.submission, Progress.from_dict(row.progress.to_dict()),
                                  row.attempts, row.created_at))
        claimed.sort(key=lambda item: (item.submission.accepted_at, item.created_at))
        return claimed

    def _busy(self, row: Row, owner: str, now: float) -> float:
        """Seconds another owner still holds a submission about this person
        whose profile is unsent (0: nobody does)."""
        mine = set(row.submission.person_keys())
        return max((other.lease_until - now for other in self.rows.values()
                    if other is not row and other.owner != owner and other.lease_until > now
                    and PROFILE_STEP not in other.progress.done
                    and mine & set(other.submission.person_keys())), default=0.0)

    def _owned(self, owner: str, item: Leased) -> Row | None:
        """The row if ``owner`` leased it last (as the spool's ``lease_owner = ?``)."""
        row = self.rows.get(item.submission.id)
        return row if row is not None and row.owner == owner else None

    def _held(self, owner: str, item: Leased) -> Row | None:
        """The row if ``owner``'s lease on it still runs."""
        row = self._owned(owner, item)
        return row if row is not None and row.lease_until > self.clock() else None

    def _profile_sent(self, submission: Submission) -> None:
        for person in submission.person_keys():
            marks = self.marks.setdefault(person, {})
            for path in attribute_paths(submission.profile):
                marks[path] = max(marks.get(path, -1), submission.accepted_at)

    # -- the lease store ----------------------------------------------------

    def save_progress_many(self, owner: str, items: list[Leased], lease: float) -> set[str]:
        saved = set()
        for item in items:
            row = self._held(owner, item)
            if row is None:
                continue
            row.progress = Progress.from_dict(item.progress.to_dict())
            row.lease_until = self.clock() + lease
            saved.add(item.submission.id)
            if PROFILE_STEP in item.progress.done:
                self._profile_sent(item.submission)
        return saved

    def complete_many(self, owner: str, items: list[Leased]) -> None:
        for item in items:
            if self._owned(owner, item) is not None:
                del self.rows[item.submission.id]
                self._profile_sent(item.submission)
                self.delivered.append(item.submission.id)

    def reschedule(self, owner: str, claimed: Leased, due_at: float,
                   error: dict[str, Any]) -> None:
        row = self._owned(owner, claimed)
        if row is not None:
            row.progress = Progress.from_dict(claimed.progress.to_dict())
            row.attempts += 1
            row.due_at, row.owner, row.lease_until, row.last_error = due_at, None, 0.0, error

    def bury(self, owner: str, claimed: Leased, error: dict[str, Any]) -> None:
        if self._owned(owner, claimed) is not None:
            del self.rows[claimed.submission.id]
            self.dead[claimed.submission.id] = Dead(claimed.submission, claimed.progress,
                                                    claimed.attempts + 1, error)

    def bring_forward(self) -> int:
        """What an outage put off is due now (the courier's predicate, as the
        spool's SQL and the pool's Lua say it)."""
        now, moved = self.clock(), 0
        for row in self.rows.values():
            if row.owner is None and row.due_at > now and row.last_error is not None \
                    and put_off_by_outage(row.last_error):
                row.due_at, moved = now, moved + 1
        return moved

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    def paused_for(self) -> float:
        return max(0.0, self.paused_until - self.clock())

    def take_rate_slot(self, endpoint: str, limits: RateLimits) -> float:
        now = self.clock()
        calls = self.calls.setdefault(endpoint, [])
        wait = 0.0
        for window, limit in limits:
            recent = [at for at in calls if at > now - window]
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + window - now)
        if wait > 0:
            return wait
        calls.append(now)
        return 0.0

    def take_profile_turns(self, owner: str, items: list[Leased],
                           lease: float) -> dict[str, Turn]:
        now = self.clock()
        turns = {}
        for item in items:
            marks: Marks = {}
            for person in item.submission.person_keys():
                for path, stamp in self.marks.get(person, {}).items():
                    marks[path] = max(marks.get(path, -1), stamp)
            row = self.rows.get(item.submission.id)
            wait = self._busy(row, owner, now) if row is not None else 0.0
            turns[item.submission.id] = Turn(wait, marks)
        return turns

    def postpone(self, owner: str, claimed: Leased, due_at: float) -> None:
        row = self._owned(owner, claimed)
        if row is not None:
            row.progress = Progress.from_dict(claimed.progress.to_dict())
            row.due_at, row.owner, row.lease_until = due_at, None, 0.0
