"""The shared SQLite file of a spool: its tables, a connection per thread, forks.

The plumbing under :class:`~klaviyo_middleware.delivery.spool.store.Spool`,
as huey's ``BaseSqlStorage`` keeps connections apart from queue SQL:

- one connection per thread, kept in a registry and closed under
  :attr:`SpoolFile.fork_guard`, never by a thread's storage being freed;
- no fork while a thread of ours is inside SQLite (gunicorn ``--preload``);
- a file deleted or replaced under a running site is noticed and what it
  held is carried into the file now at the path;
- the write-ahead log emptied and cut to zero on request.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from klaviyo_middleware.delivery.spool.connections import file_identity, immediate, open_wal
from klaviyo_middleware.delivery.spool.schema import (
    ADDED_COLUMNS,
    RENAMED_COLUMNS,
    SCHEMA,
    TOTALS,
)
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

ENV_SPOOL_PATH = "KLAVIYO_SPOOL_PATH"
DURABILITY = {"full": "FULL", "normal": "NORMAL"}


def default_spool_path() -> Path:
    """Where the spool lives unless ``spool_path`` or ``$KLAVIYO_SPOOL_PATH`` says:
    ``$XDG_CACHE_HOME/klaviyo_middleware/spool.sqlite3`` (``~/.cache/...``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "klaviyo_middleware" / "spool.sqlite3"


class SpoolFile:
    """One spool file, opened by this process (its tables created if missing).

    :param path: the spool file; its directory is created if missing.
    :param durability: ``"full"`` or ``"normal"`` (see :class:`Spool`).
    :param busy_timeout: seconds a write waits for another process's.
    """

    def __init__(self, path: str | os.PathLike[str], *, durability: str = "full",
                 busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.durability = DURABILITY[durability]
        self.busy_timeout = busy_timeout
        # Held around every SQLite call on the shared file (reading() and
        # transaction() take it), so that a fork never copies a connection
        # mid-call; SpoolAdmin holds it around the intakes it reads.
        self.fork_guard = threading.Lock()
        self._connections: dict[int, sqlite3.Connection] = {}
        self._inherited: list[sqlite3.Connection] = []
        # Which file the open connections write to: (device, inode).
        self._file: tuple[int, int] | None = None
        self._wal_file: tuple[int, int] | None = None
        self._watch_forks()

    def _hold_for_fork(self) -> list[threading.Lock]:
        """Locks a subclass holds across a fork, after the guard (acquired)."""
        return []

    def _after_fork(self) -> None:
        """What a subclass forgets in a forked child."""

    def _before_closing_all(self) -> None:
        """What a subclass hands over before every connection closes."""

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection; call only while holding :attr:`fork_guard`.

        Connections are kept in a registry, not in thread-local storage, so
        that each is closed here, under the guard, rather than whenever a
        thread's storage happens to be freed: closing touches SQLite's
        process-wide mutexes, and a fork at that moment would hang the child.
        """
        if self._connections and self._current_file() != self._file:
            self._file_replaced()
        ident = threading.get_ident()
        db = self._connections.get(ident)
        if db is None:
            self._close_finished_threads()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Shared between threads only in the sense that a new thread may
            # reuse a finished one's ident; calls are serialised by the guard.
            db = open_wal(self.path, self.durability, self.busy_timeout)
            current = self._current_file()
            if current != self._file:
                # A new file (or a first look at this one): make sure it has
                # our tables, in one write transaction (several processes may
                # be starting on it).
                with immediate(db, self.busy_timeout):
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    for statement in TOTALS:
                        db.execute(statement)
                    _bring_columns_up_to_date(db)
                self._file = current
                self._wal_file = self._current_file("-wal")
            self._connections[ident] = db
        return db

    def _current_file(self, suffix: str = "") -> tuple[int, int] | None:
        return file_identity(f"{self.path}{suffix}")

    def _file_replaced(self) -> None:
        """The spool file was deleted or replaced under us (an operator
        cleaning up, a deploy swapping directories). Writing on through the
        old file would lose every later submission with it, so: carry what
        it still holds into the file now at the path (created if need be),
        and open every connection afresh there."""
        log.error("klaviyo_middleware: the spool file %s was deleted or replaced while in "
                  "use; moving what it held into the file now at that path", self.path)
        old = next(iter(self._connections.values()))
        found = old.execute("SELECT id FROM spool_file").fetchone()
        old_file = str(found[0]) if found else f"{self._file}"
        submissions = old.execute("SELECT * FROM submissions").fetchall()
        dead = old.execute("SELECT * FROM dead_letters").fetchall()
        people = old.execute("SELECT * FROM people").fetchall()
        marks = old.execute("SELECT * FROM profile_marks").fetchall()
        # Which intake rows are already moved: without them, moved ones
        # would be moved (and delivered) again.
        intakes = old.execute("SELECT * FROM intakes").fetchall()
        for db in self._connections.values():
            db.close()
        self._connections.clear()
        if self._wal_file is not None and self._current_file("-wal") == self._wal_file:
            # The old file's log is still at the path; SQLite would apply it
            # to the new file. Its content is in the rows carried over.
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f"{self.path}{suffix}")
        self._file = None
        # Already under the fork guard (called from _connection), so not
        # through _transaction, which takes it.
        db = self._connection()
        with immediate(db, self.busy_timeout):
            carried = _carry(db, old_file, submissions, dead)
            db.executemany("INSERT OR IGNORE INTO people VALUES (?, ?, ?)", people)
            db.executemany("INSERT OR IGNORE INTO profile_marks VALUES (?, ?, ?)", marks)
            # A watermark only moves forward: a row moved is never moved again.
            db.executemany("INSERT INTO intakes VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                           "SET moved_through = max(moved_through, excluded.moved_through)",
                           intakes)
        log.warning("klaviyo_middleware: carried %d queued submissions and %d dead letters "
                    "into the new spool file", carried, len(dead))

    def _close_finished_threads(self) -> None:
        alive = {thread.ident for thread in threading.enumerate()}
        for ident in [ident for ident in self._connections if ident not in alive]:
            self._connections.pop(ident).close()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection to the shared file, for queries."""
        with self.fork_guard:
            yield self._connection()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the shared file (``BEGIN IMMEDIATE``):
        serialised with every other process's."""
        with self.fork_guard:
            db = self._connection()
            with immediate(db, self.busy_timeout):
                yield db

    def _watch_forks(self) -> None:
        """Never let a fork happen while a thread of ours is inside SQLite.

        A thread inside SQLite may hold one of its mutexes; a child forked at
        that moment inherits the mutex locked and hangs at its first SQLite
        call (gunicorn ``--preload`` forks while the sender threads run). So
        the fork waits for :attr:`fork_guard`, which every SQLite call on
        the shared file holds, then for the intake's guards (in the order a
        sender takes them: a sender moving rows holds the spool's guard and
        waits for the intake's).
        """
        reference = weakref.ref(self)
        held: list[threading.Lock] = []

        def before() -> None:
            spool = reference()
            if spool is not None:
                spool.fork_guard.acquire()
                held.append(spool.fork_guard)
                held.extend(spool._hold_for_fork())

        def after_in_parent() -> None:
            while held:
                held.pop().release()

        def after_in_child() -> None:
            held.clear()
            spool = reference()
            if spool is not None:
                spool._after_fork_in_child()

        os.register_at_fork(
            before=before, after_in_parent=after_in_parent, after_in_child=after_in_child
        )

    def _after_fork_in_child(self) -> None:
        # The parent's connections stay referenced, never closed, in the
        # child: closing one here could checkpoint or remove the parent's WAL.
        self._inherited.extend(self._connections.values())
        self._connections = {}
        self.fork_guard = threading.Lock()
        self._after_fork()

    def close(self) -> None:
        """Close this thread's connection and those of finished threads."""
        with self.fork_guard:
            db = self._connections.pop(threading.get_ident(), None)
            if db is not None:
                db.close()
            self._close_finished_threads()

    def close_all(self) -> None:
        """Close every connection (when no other thread uses the spool any
        more), after handing this process's intake to the shared file."""
        self._before_closing_all()
        with self.fork_guard:
            for db in self._connections.values():
                db.close()
            self._connections.clear()

    def truncate_wal(self) -> bool:
        """Empty the write-ahead log into the database file and cut it to zero
        bytes, so that pages of delivered or erased submissions do not linger
        there (secure_delete zeroes them in the database file itself).
        ``False`` when a reader or writer elsewhere kept it from finishing."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            if wal.stat().st_size == 0:
                return True
        except OSError:
            return True
        with self.reading() as db:
            (busy, _, _) = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy


class NotASpool(ValueError):
    """An operator pointed at a file that is not a spool."""


def check_is_spool(path: str | os.PathLike[str]) -> None:
    """Refuse, before touching it, a file that is not a spool: another
    SQLite database must not get our tables, nor any file a traceback."""
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'submissions'"
            ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise NotASpool(f"{path} is not a spool file ({exc})") from None
    if found is None:
        raise NotASpool(f"{path} is an SQLite database but not a spool file")


def _carry(db: sqlite3.Connection, old_file: str, submissions: list[Any],
           dead: list[Any]) -> int:
    """Put a replaced file's rows into the new one; how many were new here.

    Every process on the old file carries it when it notices, and the new
    file may by then have delivered (deleted) what the first one carried.
    So a row carried before is not brought back; its steps done are joined
    (a step Klaviyo accepted is never sent again), and one the old file no
    longer holds — finished there by a process that noticed late — is
    finished here too."""
    before = {row[0] for row in db.execute("SELECT id FROM carried WHERE old_file = ?",
                                           (old_file,))}
    holding = {row[0] for row in submissions}
    now = time.time()
    carried = 0
    for row in submissions:
        if row[0] not in before:
            carried += db.execute("INSERT OR IGNORE INTO submissions VALUES "
                                  "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row).rowcount
            continue
        here = db.execute("SELECT progress FROM submissions WHERE id = ?", (row[0],)).fetchone()
        if here is not None:
            db.execute("UPDATE submissions SET progress = ? WHERE id = ?",
                       (_joined(here[0], row[3]), row[0]))
    db.executemany("DELETE FROM submissions WHERE id = ?",
                   [(submission_id,) for submission_id in before - holding])
    db.executemany("INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?)", dead)
    db.executemany("INSERT OR IGNORE INTO carried (old_file, id, at) VALUES (?, ?, ?)",
                   [(old_file, row[0], now) for row in submissions])
    db.execute("DELETE FROM carried WHERE at < ?", (now - 86400.0,))
    return carried


def _joined(here: str, there: str) -> str:
    """Two records of one submission's progress: the steps done in either."""
    try:
        mine, theirs = Progress.from_dict(json.loads(here)), Progress.from_dict(json.loads(there))
    except (ValueError, TypeError, KeyError):
        return here
    mine.done.extend(step for step in theirs.done if step not in mine.done)
    mine.profile_id = mine.profile_id or theirs.profile_id
    return json.dumps(mine.to_dict())


def _bring_columns_up_to_date(db: sqlite3.Connection) -> None:
    """A file made by an earlier version: its columns under today's names,
    and the columns added since."""
    for table, old, new in RENAMED_COLUMNS:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if old in columns:
            db.execute(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}")
    for table, column, declaration in ADDED_COLUMNS:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
