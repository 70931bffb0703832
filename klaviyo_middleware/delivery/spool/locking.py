"""Taking SQLite's write lock in short steps, shared by the spool and the intakes."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

_jitter = random.Random()  # noqa: S311 - retry spacing, not security


@contextmanager
def immediate(db: sqlite3.Connection, patience: float = 30.0) -> Iterator[None]:
    """One write transaction, taking the write lock at once (within
    ``patience`` seconds, see :func:`when_unlocked`)."""
    when_unlocked(db, "BEGIN IMMEDIATE", patience)
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def when_unlocked(db: sqlite3.Connection, statement: str, patience: float) -> None:
    """Run ``statement`` (one that takes the write lock) as soon as the lock is free.

    Waiting is done here rather than by SQLite's busy handler, which sleeps
    1, 2, 5, 10 … up to 100 ms between tries: with several processes on one
    spool, a thread that arrives just after another process took the lock
    would sleep far longer than the lock is held (a commit takes a fraction
    of a millisecond). Here the waits start at 50 µs and grow to 2 ms,
    jittered so that waiting processes do not retry in step. Some lock
    conflicts (a fresh file switching to WAL) never reach the busy handler
    at all; they are waited out here the same way.
    """
    deadline = time.monotonic() + patience
    wait = 0.00005
    db.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                db.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(wait * (0.5 + _jitter.random()))
            wait = min(wait * 1.5, 0.002)
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(patience * 1000)}")
