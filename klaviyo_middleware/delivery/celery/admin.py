"""Operator commands for a Celery fleet: ``klaviyo-middleware celery ...``.

The counterpart of the spool's :class:`~klaviyo_middleware.delivery.spool.admin.SpoolAdmin`,
over what the workers keep in Redis for every account: statistics, dead
letters (as :class:`~klaviyo_middleware.delivery.dead_letters.DeadLetter`,
the spool's type), sending them again, and erasing a person. The Redis key
layout stays in this package; the CLI only prints.
"""

from __future__ import annotations

from typing import Any

import redis

from klaviyo_middleware.delivery.celery.ledger import Ledger
from klaviyo_middleware.delivery.celery.pool import RedisPool
from klaviyo_middleware.delivery.celery.state import RedisState, accounts_in
from klaviyo_middleware.delivery.dead_letters import DeadLetter, relisted
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission


class CeleryAdmin:
    """Every account the workers keep state for in the Redis at ``state_url``."""

    def __init__(self, state_url: str) -> None:
        self.state_url = state_url
        self.accounts = accounts_in(redis.Redis.from_url(state_url))

    def states(self) -> list[RedisState]:
        return [RedisState(self.state_url, account) for account in self.accounts]

    def stats(self) -> list[dict[str, Any]]:
        """One line per account: delivered, dead, paused, pooled."""
        return [{"account": state.account, **state.stats(), "pooled": RedisPool(state).size()}
                for state in self.states()]

    def dead_letters(self) -> list[DeadLetter]:
        return [DeadLetter.read(letter["id"], letter["submission"], letter["progress"],
                                letter["attempts"], _created_at(letter), letter["dead_at"],
                                letter["error"])
                for state in self.states() for letter in state.dead_letters()]

    def retry(self, broker: str, ids: list[str] | None = None,
              relist: tuple[str, str] | None = None) -> int:
        """Dead letters back onto the queue, enqueued as the web nodes do it
        (ledger included, with a Redis broker); finished steps stay finished.
        One the broker refuses goes back to the dead letters, not lost.
        ``relist=(old, new)`` retries only those naming list ``old``, sent to
        list ``new`` instead."""
        from klaviyo_middleware.delivery.celery.backend import CeleryDelivery
        from klaviyo_middleware.delivery.celery.tasks import make_celery

        delivery = CeleryDelivery(make_celery(broker), owns_app=True)
        requeued = 0
        try:
            for state in self.states():
                chosen = ids
                changed: dict[str, dict[str, Any]] = {}
                if relist is not None:
                    for letter in state.dead_letters():
                        moved = relisted(letter["submission"], *relist)
                        if moved is not None and (ids is None or letter["id"] in ids):
                            changed[letter["id"]] = moved
                    if not changed:
                        continue
                    chosen = list(changed)
                for letter in state.take_dead(chosen):
                    submission = Submission.from_dict(changed.get(letter["id"],
                                                                  letter["submission"]))
                    progress = Progress.from_dict(letter["progress"])
                    state.save_progress(submission.id, progress)
                    state.unfinish(submission.id)
                    if delivery.submit(submission).accepted:
                        requeued += 1
                    else:
                        state.bury(submission, progress, letter["error"], letter["attempts"])
        finally:
            delivery.close()
        return requeued

    def forget(self, email: str | None, phone_number: str | None) -> dict[str, int]:
        """Erase a person's dead letters, pooled submissions, delivery-order
        keys and ledger entries; the counts. Tasks already in the broker's
        queue are still delivered."""
        dead = pooled = 0
        for state in self.states():
            dead += state.forget(email, phone_number)
            pool = RedisPool(state)
            pooled += pool.forget(email, phone_number)
            # The delivery-order keys are hashed, but still about the person.
            pool.forget_person(email, phone_number)
        recorded = Ledger(self.state_url).forget(email, phone_number)
        return {"dead": dead, "pooled": pooled, "ledger": recorded}


def _created_at(letter: dict[str, Any]) -> float:
    """Redis keeps no arrival time beside a dead letter: the submission's own."""
    stored = letter.get("submission") or {}
    accepted_at = stored.get("accepted_at", stored.get("accepted"))  # or its earlier name
    if isinstance(accepted_at, int) and accepted_at > 0:
        return accepted_at / 1_000_000  # an acceptance stamp, in microseconds
    return float(letter["dead_at"])
