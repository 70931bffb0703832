"""How the spool's SQLite files (the shared one and the intakes) are opened
and written: in WAL mode, deleted rows zeroed, the write lock taken in short
steps."""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

_jitter = random.Random()  # noqa: S311 - retry spacing, not security
# Bytes a write-ahead log is cut back to after a checkpoint.
WAL_SIZE_LIMIT = 4 * 1024 * 1024
# The files SQLite keeps beside a database in WAL mode.
_COMPANIONS = ("-wal", "-shm")


def open_wal(path: Path, durability: str, patience: float) -> sqlite3.Connection:
    """A connection to ``path`` (created, owner-only, if missing) in WAL mode.

    ``durability`` is SQLite's ``synchronous`` level; ``patience`` the
    seconds any statement waits for a lock. Connections may be handed
    between threads: every caller serialises its calls under its own guard.
    """
    if not path.exists():
        # Submissions hold personal data: owner only. SQLite gives the
        # -wal and -shm files the same permissions.
        path.touch(mode=0o600)
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _COMPANIONS)):
        make_private(file)
    db = sqlite3.connect(path, timeout=patience, isolation_level=None,
                         check_same_thread=False)
    # Processes starting together on a fresh file race to set it up.
    when_unlocked(db, "PRAGMA journal_mode=WAL", patience)
    db.execute(f"PRAGMA synchronous={durability}")
    # Deleted rows (delivered, forgotten, purged, moved) are overwritten
    # with zeros, not left readable in free pages.
    db.execute("PRAGMA secure_delete=ON")
    # A REPLACE that deletes a row fires its delete triggers too (the spool
    # keeps the dead letters' bytes by trigger).
    db.execute("PRAGMA recursive_triggers=ON")
    # After a checkpoint the log shrinks back to this, rather than keeping
    # the largest size it ever had: on a small disk, that is room delivery
    # needs (docs/delivery.md, "Bounded disk").
    db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    return db


def make_private(path: Path) -> None:
    """Make an existing file owner-only (it holds addresses); a file that
    others may read and that we may not change stops the start with one line."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return
    try:
        os.chmod(path, 0o600)
    except OSError:
        raise ConfigurationError(
            f"{path} is readable by other users (mode {stat.filemode(mode)}) and this "
            "process may not change that; it holds personal data: chmod 600 it, or run as "
            "its owner") from None
    log.warning("klaviyo_middleware: %s was readable by other users (mode %s); made it "
                "owner-only, as it holds personal data", path, stat.filemode(mode))


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path``; ``None`` if there is none.
    A change means the file was deleted or replaced under its users."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


@contextmanager
def immediate(db: sqlite3.Connection, patience: float = 30.0) -> Iterator[None]:
    """One write transaction, taking the write lock at once (within
    ``patience`` seconds, see :func:`when_unlocked`)."""
    when_unlocked(db, "BEGIN IMMEDIATE", patience)
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # A COMMIT that failed (a full disk) may have rolled back already.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


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
