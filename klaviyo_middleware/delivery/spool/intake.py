"""One process's intake: where its visitors' submissions are committed.

Every process of a site shares one spool file, and SQLite lets one process at
a time write to a file. If the request path wrote to the shared file, a
visitor would wait whenever another process's sender held the lock —
claiming, saving progress, logging a rate-limit slot. So each process commits
what its visitors post to a small file of its own, which only it writes
(docs/design.md, "Many processes on one spool"): the visitor's wait is one
commit of one row, never another process's delivery work.

The process's sender then *moves* those rows into the shared spool, inside
the same write transaction as its next claim. The shared spool records, per
intake, the last row moved (``intakes.moved_through``) in that transaction,
so a row is moved exactly once even if the process dies between the two
files' commits; moved rows are dropped from the intake later, in batches.

An intake is *owned* while its process holds an exclusive ``flock`` on its
``.lock`` file. The kernel releases the lock when the process ends however it
ends (SIGKILL included), and any other process's sender then *adopts* the
intake: moves what it holds and removes it. Nothing a visitor was told is
accepted is lost.

Several request threads (gthread, waitress) posting at once share commits
(group commit): the first thread to arrive commits every row queued at that
moment in one transaction, so N visitors pay for one sync to disk, not N.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from klaviyo_middleware.delivery.spool.connections import file_identity, immediate, open_wal

# seq only grows (AUTOINCREMENT), even after every row is dropped: the shared
# spool's watermark stays meaningful for the file's whole life.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS intake ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, account TEXT NOT NULL, "
    "payload TEXT NOT NULL, created_at REAL NOT NULL)"
)

# (seq, id, account, payload, created_at)
Row = tuple[int, str, str, str, float]

# Moved rows are dropped from the intake once this many have gathered, or
# this many seconds after the last drop: a drop is a write (and a sync) the
# visitors of this process would otherwise wait behind after every move.
DROP_EVERY_ROWS = 256
DROP_EVERY_SECONDS = 1.0
# Cutting the log to zero blocks this process's visitors while the database
# file syncs: when idle, and at most once a minute.
EMPTY_LOG_EVERY_SECONDS = 60.0


class SpoolFull(Exception):
    """The spool reached ``max_bytes``; the visitor is asked to retry later."""


class IntakeGone(Exception):
    """The intake's file was deleted or replaced while in use: a commit to
    it would be lost with the process. Nothing was committed."""


def intake_directory(spool_path: Path) -> Path:
    """Where the intakes of the spool at ``spool_path`` live: beside it."""
    return spool_path.with_name(spool_path.name + "-intake")


def intake_files(spool_path: Path) -> list[Path]:
    """Every intake of the spool, owned or not, oldest name first."""
    try:
        return sorted(intake_directory(spool_path).glob("*.sqlite3"))
    except OSError:
        return []


@dataclass
class _Waiting:
    """A row a request thread handed to the group commit."""

    row: tuple[str, str, str, float]
    size: int
    room: int
    done: threading.Event = field(default_factory=threading.Event)
    leads: bool = False
    error: BaseException | None = None


class Intake:
    """An intake file this process holds the lock of: its own, or adopted.

    Use :meth:`create` for this process's own and :meth:`adopt` for one whose
    process has ended.
    """

    def __init__(self, path: Path, lock_fd: int, durability: str, patience: float) -> None:
        self.path = path
        self.name = path.stem
        self.pid = os.getpid()
        self._lock_fd: int | None = lock_fd
        self._durability = durability
        self._patience = patience
        # Request threads write through one connection, the mover reads and
        # drops through another: a drop or checkpoint never holds the
        # Python lock a visitor's commit needs.
        self._write_guard = threading.Lock()
        self._move_guard = threading.Lock()
        self._writer = self._open()
        self._mover = self._open()
        self._identity = file_identity(path)
        self._inherited: list[sqlite3.Connection] = []
        self._queue_lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self._leading = False
        self._counts = threading.Lock()
        # What this process knows without reading the file: the sizes of
        # the rows it committed and has not moved, by seq.
        self.last_seq = 0
        self.moved_seq = 0
        self._unmoved: dict[int, int] = {}
        self.unmoved_bytes = 0
        self._dropped_seq = 0
        self._dropped_at = time.monotonic()
        self._emptied_at = 0.0

    # -- owning ---------------------------------------------------------------

    @classmethod
    def create(cls, spool_path: Path, durability: str, patience: float) -> Intake:
        """A new intake for this process, locked before its file exists."""
        directory = intake_directory(spool_path)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.sqlite3"
            fd = _lock(path.with_suffix(".lock"), create=True)
            if fd is not None:
                return cls(path, fd, durability, patience)

    @classmethod
    def adopt(cls, path: Path, durability: str, patience: float) -> Intake | None:
        """The intake at ``path`` if its process has ended (its lock is free),
        now locked by this one; ``None`` while its owner lives or once gone."""
        fd = _lock(path.with_suffix(".lock"), create=False)
        if fd is None:
            return None
        if not path.exists():
            # Removed by another adopter after we opened the lock file.
            os.close(fd)
            return None
        try:
            return cls(path, fd, durability, patience)
        except BaseException:
            os.close(fd)
            raise

    def _open(self) -> sqlite3.Connection:
        db = open_wal(self.path, self._durability, self._patience)
        # Checkpoints are the mover's job (after a drop), never a visitor's.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(_SCHEMA)
        return db

    @property
    def owned_here(self) -> bool:
        """Whether this object belongs to the running process (not a fork's parent)."""
        return self.pid == os.getpid() and self._lock_fd is not None

    # -- the request path -----------------------------------------------------

    def add(self, submission_id: str, account: str, payload: str, created_at: float,
            room: int) -> None:
        """Commit one submission; returns once it is on disk.

        Raises :class:`SpoolFull` when the rows not yet moved would pass
        ``room`` bytes, or ``sqlite3.Error``.
        """
        entry = _Waiting((submission_id, account, payload, created_at), len(payload), room)
        with self._queue_lock:
            self._queue.append(entry)
            entry.leads = not self._leading
            self._leading = True
        if not entry.leads:
            entry.done.wait()
        if entry.leads:
            # First in line (or handed the lead): commit what is queued.
            self._lead()
        if entry.error is not None:
            raise entry.error

    def _lead(self) -> None:
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        finally:
            with self._queue_lock:
                if self._queue:
                    # Those who came during the commit: the first one leads.
                    self._queue[0].leads = True
                    self._queue[0].done.set()
                else:
                    self._leading = False
            for entry in batch:
                entry.done.set()

    def _commit(self, batch: list[_Waiting]) -> None:
        taken: list[tuple[int, int]] = []
        with self._write_guard:
            if file_identity(self.path) != self._identity:
                for entry in batch:
                    entry.error = IntakeGone(f"the intake {self.path} was deleted or replaced")
                return
            try:
                with immediate(self._writer, self._patience):
                    with self._counts:
                        held = self.unmoved_bytes
                    for entry in batch:
                        if held + entry.size > entry.room:
                            entry.error = SpoolFull(
                                f"the spool is full: {entry.room} bytes left for rows not "
                                f"yet delivered, {held} of them taken")
                            continue
                        (seq,) = self._writer.execute(
                            "INSERT INTO intake (id, account, payload, created_at) "
                            "VALUES (?, ?, ?, ?) RETURNING seq", entry.row).fetchone()
                        taken.append((seq, entry.size))
                        held += entry.size
            except BaseException as exc:
                # Rolled back: nobody in this batch is committed.
                failure = exc if isinstance(exc, sqlite3.Error) else sqlite3.OperationalError(
                    f"the commit was interrupted ({type(exc).__name__})")
                for entry in batch:
                    if entry.error is None:
                        entry.error = failure
                if failure is not exc:
                    raise
                return
            # Still under the write guard: remove() sees every committed row.
            with self._counts:
                for seq, size in taken:
                    self._unmoved[seq] = size
                    self.unmoved_bytes += size
                if taken:
                    self.last_seq = max(self.last_seq, taken[-1][0])

    # -- the mover ------------------------------------------------------------

    def rows_after(self, seq: int, limit: int) -> tuple[list[Row], int]:
        """Up to ``limit`` rows not moved yet, in order: those after ``seq``
        (the shared spool's watermark for this intake); and the seq up to
        which the answer is complete (a row ``spool forget`` erased is not
        in it). A full batch is complete only through its last row."""
        upto = self.last_seq  # committed before the read starts: all visible to it
        with self._move_guard:
            rows = self._mover.execute(
                "SELECT seq, id, account, payload, created_at FROM intake WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (seq, limit)).fetchall()
        if len(rows) == limit:
            return rows, rows[-1][0]
        return rows, max(upto, rows[-1][0] if rows else 0)

    def moved(self, upto: int) -> None:
        """Every row up to ``upto`` is in the shared spool now (its
        transaction committed), or was erased."""
        with self._counts:
            self.moved_seq = max(self.moved_seq, upto)
            for seq in [seq for seq in self._unmoved if seq <= upto]:
                self.unmoved_bytes -= self._unmoved.pop(seq)
        if (self.moved_seq - self._dropped_seq >= DROP_EVERY_ROWS
                or time.monotonic() - self._dropped_at >= DROP_EVERY_SECONDS):
            self.drop_moved()

    @property
    def has_unmoved(self) -> bool:
        return self.last_seq > self.moved_seq

    @property
    def unmoved_rows(self) -> int:
        return len(self._unmoved)

    def drop_moved(self) -> None:
        """Delete the rows already in the shared spool, and let the log be reused."""
        self._dropped_at = time.monotonic()
        if self.moved_seq <= self._dropped_seq:
            return
        with self._move_guard:
            with immediate(self._mover, self._patience):
                self._mover.execute("DELETE FROM intake WHERE seq <= ?", (self.moved_seq,))
            self._dropped_seq = self.moved_seq
            # PASSIVE: never waits for, nor holds back, a visitor's commit.
            self._mover.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def empty_log(self, force: bool = False) -> None:
        """Cut the write-ahead log to zero bytes when idle (at most once a
        minute, unless ``force``), so that the pages of moved submissions do
        not linger in it."""
        if not force and time.monotonic() - self._emptied_at < EMPTY_LOG_EVERY_SECONDS:
            return
        self._emptied_at = time.monotonic()
        with self._move_guard:
            self._mover.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- the end --------------------------------------------------------------

    def remove(self, upto: int) -> bool:
        """Delete the intake's files and unlock, if nothing was committed
        after ``upto`` (the seq it is moved through). ``False``, and nothing
        done, otherwise."""
        with self._write_guard, self._move_guard:
            if self.last_seq > upto:
                return False
            self._writer.close()
            self._mover.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}{suffix}")
        # The lock file last, still locked: an adopter that opened it
        # meanwhile finds no intake behind it.
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path.with_suffix(".lock"))
        self._unlock()
        return True

    def release(self) -> None:
        """Close and unlock, leaving the rows for whoever adopts the intake."""
        self._close_connections()
        self._unlock()

    def _close_connections(self) -> None:
        with self._write_guard, self._move_guard:
            self._writer.close()
            self._mover.close()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # -- fork safety ----------------------------------------------------------

    def hold_for_fork(self) -> list[threading.Lock]:
        """Wait until no thread of ours is inside SQLite on this intake (a
        child inheriting one of SQLite's mutexes locked would hang); the
        locks now held, for the caller to release after the fork. The spool
        calls this from its own fork hook, after taking its own guard — the
        order every other path takes them in."""
        self._write_guard.acquire()
        self._move_guard.acquire()
        return [self._write_guard, self._move_guard]

    def after_fork_in_child(self) -> None:
        """The intake stays the parent's: let go of everything."""
        # The child's copy of the lock's file descriptor must go, or the
        # parent's intake would look owned for as long as the child lives;
        # closing a copy leaves the parent's lock in place. Connections are
        # kept referenced, never closed: closing could touch the parent's log.
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._inherited.extend((self._writer, self._mover))
        self._write_guard = threading.Lock()
        self._move_guard = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue = []
        self._leading = False
        self._counts = threading.Lock()


def _lock(path: Path, *, create: bool) -> int | None:
    """An exclusive ``flock`` on ``path``; ``None`` when another holds it (or
    the file is gone and not to be created)."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unmoved_summary(path: Path, moved_through: int) -> tuple[int, float | None]:
    """How many rows of the intake at ``path`` are not yet in the shared
    spool, and when the oldest was accepted (for ``spool stats``; read
    without taking the intake's lock)."""
    with contextlib.closing(_open_existing(path)) as db:
        count, oldest = db.execute("SELECT count(*), min(created_at) FROM intake WHERE seq > ?",
                                   (moved_through,)).fetchone()
    return int(count), oldest


@contextlib.contextmanager
def writing_to(path: Path, patience: float) -> Iterator[sqlite3.Connection]:
    """A write transaction on an intake that may belong to another process
    (``spool forget``: personal data goes from every file that holds it)."""
    with contextlib.closing(_open_existing(path)) as db, immediate(db, patience):
        yield db


def empty_log_of(path: Path) -> None:
    """Cut the log of the intake at ``path`` to zero bytes, if no one is
    using it at this moment (its owner does so itself when idle)."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_open_existing(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _open_existing(path: Path) -> sqlite3.Connection:
    # mode=rw: never create an intake that was just removed.
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True,
                           isolation_level=None)
