"""Submissions handed to a Redis broker, until a worker has finished with them.

Celery's Redis transport takes a task off the queue with ``BRPOP`` and only
then records it as unacknowledged: a worker killed between the two — or
whose reply from Redis never arrived — loses the task, ``acks_late`` or not.
Our SIGKILL test caught it about once in ten runs. RabbitMQ has no such
window. So with a Redis broker the web node also writes each submission
here, in the broker's Redis, before it enqueues the task; workers note each
sign of life and settle the entry once the submission is delivered,
dead-lettered or in the backlog pool; and a sweeper in the workers
re-enqueues an entry that has shown no life for longer than the visibility
timeout and whose task is nowhere in the broker — neither waiting in the
queue nor reserved by a worker (a task's id is its submission's id, so the
broker's messages say which are there). A queue that never empties cannot
hide a lost task, and a task merely waiting its turn is never taken for
lost. A duplicate costs one lookup: the task finds its submission finished.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from klaviyo_middleware.model.submission import is_about

PAYLOADS = "klaviyo_middleware:ledger"
ACTIVITY = "klaviyo_middleware:ledger:activity"
SWEEP_TURN = "klaviyo_middleware:ledger:sweep"
# Where kombu's Redis transport keeps the messages workers have reserved.
UNACKED = "unacked"


def wants_ledger(broker_url: str) -> bool:
    """Only Redis brokers can lose a task a worker took; RabbitMQ's acks cannot."""
    return broker_url.startswith(("redis://", "rediss://", "unix://"))


class Ledger:
    """``timeout``: seconds for connecting and for each reply (the web side
    bounds what a visitor can wait; the workers keep redis-py's defaults)."""

    def __init__(self, url: str, timeout: float | None = None) -> None:
        bounds = {} if timeout is None else {"socket_timeout": timeout,
                                             "socket_connect_timeout": timeout}
        self.redis = redis.Redis.from_url(url, **bounds)

    def __repr__(self) -> str:
        return f"<Ledger {PAYLOADS!r}>"

    def record(self, submission_id: str, payload: dict[str, Any]) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(PAYLOADS, submission_id, json.dumps(payload, separators=(",", ":")))
        pipe.zadd(ACTIVITY, {submission_id: time.time()})
        pipe.execute()

    def alive(self, submission_id: str, until: float | None = None) -> None:
        """A task is working on it (or, with ``until``, will be by then)."""
        self.redis.zadd(ACTIVITY, {submission_id: until or time.time()}, xx=True)

    def settle(self, submission_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hdel(PAYLOADS, submission_id)
        pipe.zrem(ACTIVITY, submission_id)
        pipe.execute()

    def forget(self, email: str | None, phone_number: str | None) -> int:
        """Drop the entries about a person; how many."""
        found = [key for key, raw in self.redis.hgetall(PAYLOADS).items()
                 if is_about(json.loads(raw), email, phone_number)]
        for key in found:
            self.settle(key.decode() if isinstance(key, bytes) else key)
        return len(found)

    def stale(self, quiet_for: float, limit: int = 500) -> list[dict[str, Any]]:
        """Payloads of entries with no sign of life for ``quiet_for`` seconds."""
        ids: list[Any] = list(self.redis.zrangebyscore(
            ACTIVITY, "-inf", time.time() - quiet_for, start=0, num=limit))
        if not ids:
            return []
        payloads = self.redis.hmget(PAYLOADS, ids)
        orphans = [key for key, raw in zip(ids, payloads, strict=True) if raw is None]
        if orphans:
            self.redis.zrem(ACTIVITY, *orphans)
        return [json.loads(raw) for raw in payloads if raw is not None]

    def in_broker(self, queue: str, ids: set[str]) -> set[str]:
        """Which of ``ids`` have a task in the broker: waiting in ``queue``
        (at any priority) or reserved by a worker (kombu's ``unacked``)."""
        found: set[str] = set()
        if not ids:
            return found
        for name in (queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9))):
            start = 0
            while True:
                messages = self.redis.lrange(name, start, start + 999)
                found |= {task for raw in messages if (task := _task_id(_json(raw))) in ids}
                if len(messages) < 1000:
                    break
                start += 1000
        for raw in self.redis.hvals(UNACKED):
            # Each entry is [message, exchange, routing key].
            entry = _json(raw)
            message = entry[0] if isinstance(entry, list) and entry else None
            if (task := _task_id(message)) in ids:
                found.add(task)
        return found

    def size(self) -> int:
        return int(self.redis.hlen(PAYLOADS))

    def take_sweep_turn(self, seconds: float) -> bool:
        """One sweeper in the fleet per ``seconds``."""
        return bool(self.redis.set(SWEEP_TURN, "1", nx=True, px=max(1, int(seconds * 1000))))


def _json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _task_id(message: Any) -> str | None:
    """The task id in a kombu message as stored in Redis (its headers are plain JSON)."""
    try:
        return str(message["headers"]["id"])
    except (TypeError, KeyError):
        return None
