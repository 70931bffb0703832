"""One Celery task as a lease store, so that a task is delivered by the same
:class:`~klaviyo_middleware.delivery.courier.Courier` as the spool and the
pool.

The broker is the lease here: a task is acknowledged late, so while it runs
no other worker has it, and if its worker dies the message comes back. What
the courier records goes where a re-delivered task finds it: progress and
dead letters in Redis, and "retry later" as the task's own retry, enqueued
with the countdown the courier chose.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from celery import Task

from klaviyo_middleware.delivery.celery.ledger import Ledger
from klaviyo_middleware.delivery.celery.state import RedisState, SharedCapacity
from klaviyo_middleware.delivery.celery.turns import PersonTurns
from klaviyo_middleware.delivery.courier import (
    KEY_RECHECK,
    held_for_the_key,
    put_off_by_outage,
)
from klaviyo_middleware.model.lease import Leased

if TYPE_CHECKING:
    from celery.exceptions import Retry

    from klaviyo_middleware.delivery.celery.pool import RedisPool


class TaskLease(SharedCapacity, PersonTurns):
    """The lease store of one running task (see the module docstring).

    After the courier returns, :attr:`retry` holds the task's retry when the
    courier rescheduled the submission; raise it to end the run. Otherwise
    :attr:`outcome` says how the submission ended (the task's result).
    """

    def __init__(self, task: Task, state: RedisState, ledger: Ledger | None,
                 pool: RedisPool | None = None) -> None:
        self.task = task
        self.state = state
        self.ledger = ledger
        # Where a submission Klaviyo's outage put off waits (see reschedule).
        self.pool = pool
        self.retry: Retry | None = None
        self.outcome = "unfinished"
        self.brought_forward = 0

    def save_progress_many(self, owner: str, items: list[Leased], lease: float) -> set[str]:
        for item in items:
            self.state.save_progress(item.submission.id, item.progress)
            self.alive(item.submission.id)
        self.after_saving(owner, items, lease)
        # Nobody else can hold a reserved task: every lease still holds.
        return {item.submission.id for item in items}

    def complete_many(self, owner: str, items: list[Leased]) -> None:
        self.after_saving(owner, items, 0.001)
        for item in items:
            self.state.complete(item.submission.id)
            self._finish(item.submission.id)
        self.outcome = "delivered"

    def reschedule(self, owner: str, claimed: Leased, due_at: float,
                   error: dict[str, Any]) -> None:
        if held_for_the_key(error) and self.state.note_key_refused(KEY_RECHECK) \
                and self.pool is not None:
            # The key is refused: the pool is the key's (its Redis keys carry
            # its fingerprint), the broker's queue is not, so what the pool
            # holds goes back there, for workers with the key put right.
            self.pool.hand_back_all()
        if self.pool is not None and put_off_by_outage(error):
            # Klaviyo failing: the submission waits in the pool, where the
            # probe finds it and Klaviyo's return brings it forward, rather
            # than in the broker until its own backoff ends.
            self.let_go(owner, claimed)
            self.pool.add(claimed.submission, claimed.progress, claimed.attempts + 1,
                          claimed.created_at, due_at, error)
            self.settle(claimed.submission.id)
            self.outcome = "pooled"
            return
        self.postpone(owner, claimed, due_at)

    def bring_forward(self) -> int:
        """Klaviyo answers again: what the outage put off is due now (the
        task then makes sure a drain sends it)."""
        self.brought_forward = self.pool.bring_forward() if self.pool is not None else 0
        return self.brought_forward

    def postpone(self, owner: str, claimed: Leased, due_at: float) -> None:
        self.let_go(owner, claimed)
        self.state.save_progress(claimed.submission.id, claimed.progress)
        delay = max(0.0, due_at - time.time())
        self.alive(claimed.submission.id, due_at)
        # Enqueued now, before the courier tells the observers; raised by
        # the task once the courier returns.
        self.retry = self.task.retry(countdown=delay, max_retries=None, throw=False)

    def bury(self, owner: str, claimed: Leased, error: dict[str, Any]) -> None:
        self.let_go(owner, claimed)
        self.state.bury(claimed.submission, claimed.progress, error, claimed.attempts + 1)
        self._finish(claimed.submission.id)
        self.outcome = "dead"

    def alive(self, submission_id: str, until: float | None = None) -> None:
        """Tell the ledger the task is not lost (until ``until``, if waiting)."""
        if self.ledger is not None:
            self.ledger.alive(submission_id, until)

    def settle(self, submission_id: str) -> None:
        if self.ledger is not None:
            self.ledger.settle(submission_id)

    def _finish(self, submission_id: str) -> None:
        self.state.mark_finished(submission_id)
        self.settle(submission_id)
