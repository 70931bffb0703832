"""The durable spool: submissions in SQLite until Klaviyo has them (design.md §3).

One file, in WAL mode, shared by every process of a site (gunicorn workers,
uWSGI processes, the CLI). A submission is committed here before the visitor
gets an answer. Workers *lease* what they deliver: a lease names its owner
and expires, so a process killed with SIGKILL loses nothing — its submissions
become claimable again when the lease runs out, or at once when the owner is
seen to be dead.

Rows carry an ``account`` fingerprint (a hash of API URL and key) so that two
sites sharing a spool file by mistake never deliver each other's submissions
with the wrong key.

Everything that must be consistent across processes — claims, the
account-wide pause after a 429, rate-limit bookkeeping — happens inside
``BEGIN IMMEDIATE`` transactions, which SQLite serialises between processes.

A person's profiles are written in acceptance order
(:mod:`klaviyo_middleware.model.profile_order`): ``people`` lists, for each
submission whose profile is still to send, the (hashed) people it is about,
and a claim never leases one while another submission about the same person
is leased with its profile unsent. ``profile_marks`` records what a newer
profile has sent, for as long as an older one about that person waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from klaviyo_middleware.delivery.dead_letters import DeadLetter
from klaviyo_middleware.delivery.spool.connections import file_identity, immediate, open_wal
from klaviyo_middleware.delivery.spool.intake import (
    Intake,
    IntakeGone,
    Row,
    SpoolFull,
    intake_directory,
    intake_files,
)
from klaviyo_middleware.klaviyo.steps import PROFILE_STEP
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.profile_order import Turn, attribute_paths, person_hashes
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

ENV_SPOOL_PATH = "KLAVIYO_SPOOL_PATH"
# Seconds a profile mark outlives every submission that needed it. A process
# moves what it accepted into the shared file within moments, unless it is
# stopped (then another adopts its intake within seconds) or stalled; an
# older submission about the same person arriving from there within this
# time still gives way to what a newer one sent.
MARK_GRACE = 600.0
# Rows moved from an intake per transaction on the shared file: a backlog
# (a sender held up) moves in steps, never all in memory or under one lock.
MOVE_BATCH = 1000
DURABILITY = {"full": "FULL", "normal": "NORMAL"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    payload TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    due_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS submissions_due ON submissions (account, due_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    payload TEXT NOT NULL,
    progress TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    owner TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    heartbeat_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pauses (
    account TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_log (
    account TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_log_at ON rate_log (account, endpoint, at);
CREATE TABLE IF NOT EXISTS people (
    submission_id TEXT NOT NULL,
    person TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    PRIMARY KEY (person, submission_id)
);
CREATE INDEX IF NOT EXISTS people_submission ON people (submission_id);
CREATE TABLE IF NOT EXISTS profile_marks (
    person TEXT NOT NULL,
    path TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    PRIMARY KEY (person, path)
);
CREATE TABLE IF NOT EXISTS housekeeping (
    task TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS intakes (
    name TEXT PRIMARY KEY,
    moved_through INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (account, name)
);
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_dead_at ON dead_letters (dead_at);
"""

# Dead letters have a budget of their own (dead_letter_max_size): their bytes
# are kept in ``totals`` by triggers, so that neither the request path nor a
# claim ever has to add them up. A file from before the totals is counted
# once, when first opened by this version. Statements with BEGIN ... END,
# so not split on ";" as _SCHEMA is.
_TOTALS = (
    "INSERT INTO totals (name, value) SELECT 'dead_bytes', "
    "(SELECT coalesce(sum(length(payload) + length(progress) + length(error)), 0) "
    "FROM dead_letters) WHERE NOT EXISTS (SELECT 1 FROM totals WHERE name = 'dead_bytes')",
    "CREATE TRIGGER IF NOT EXISTS dead_letter_added AFTER INSERT ON dead_letters BEGIN "
    "INSERT INTO totals (name, value) VALUES "
    "('dead_bytes', length(NEW.payload) + length(NEW.progress) + length(NEW.error)) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value; END",
    "CREATE TRIGGER IF NOT EXISTS dead_letter_removed AFTER DELETE ON dead_letters BEGIN "
    "UPDATE totals SET value = "
    "max(0, value - (length(OLD.payload) + length(OLD.progress) + length(OLD.error))) "
    "WHERE name = 'dead_bytes'; END",
)
# A row put off by Klaviyo failing (5xx, or no answer at all: a timeout, no
# connection), which comes due at once when Klaviyo answers again.
PUT_OFF_BY_OUTAGE = ("last_error IS NOT NULL "
                      "AND coalesce(json_extract(last_error, '$.status'), 500) >= 500")
# Room kept free on the spool's filesystem for delivery's own writes (leases,
# progress, moving rows out of the intakes, the write-ahead logs): new
# submissions are refused before the disk is full, never delivery's writes.
# Half of a small filesystem at most.
DISK_RESERVE = 16 * 1024 * 1024
# An accepted byte on disk: in the intake, then moved into the shared file
# and its log, then zeroed out of the intake through the intake's log.
DISK_PER_BYTE = 4


def default_spool_path() -> Path:
    """Where the spool lives unless ``spool_path`` or ``$KLAVIYO_SPOOL_PATH`` says:
    ``$XDG_CACHE_HOME/klaviyo_middleware/spool.sqlite3`` (``~/.cache/...``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "klaviyo_middleware" / "spool.sqlite3"


class Spool:
    """The SQLite file and every query against it.

    :param path: the spool file; its directory is created if missing.
    :param account: the fingerprint this process delivers for.
    :param durability: ``"full"`` fsyncs every commit (survives power loss);
        ``"normal"`` survives a crashed or killed process but may lose the
        last commits on power loss, and accepts submissions faster.
    :param max_bytes: when the submissions waiting for delivery take this
        much, new submissions are refused with :class:`SpoolFull`.
    :param dead_max_bytes: the dead letters' own budget; past it the oldest
        are deleted to make room, so dead letters never refuse a submission.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        account: str,
        *,
        durability: str = "full",
        max_bytes: int = 256 * 1024 * 1024,
        dead_max_bytes: int = 64 * 1024 * 1024,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.account = account
        self.durability = DURABILITY[durability]
        self.max_bytes = max_bytes
        self.dead_max_bytes = dead_max_bytes
        self.busy_timeout = busy_timeout
        self._evictions_logged_at = 0.0
        # Held around every SQLite call on the shared file (reading() and
        # transaction() take it), so that a fork never copies a connection
        # mid-call; SpoolAdmin holds it around the intakes it reads.
        self.fork_guard = threading.Lock()
        self._connections: dict[int, sqlite3.Connection] = {}
        self._inherited: list[sqlite3.Connection] = []
        # Which file the open connections write to: (device, inode).
        self._file: tuple[int, int] | None = None
        self._wal_file: tuple[int, int] | None = None
        # This process's own intake (intake.py), made at its first submission.
        self._intake: Intake | None = None
        self._intake_lock = threading.Lock()
        self._unreadable_intakes: set[str] = set()
        self._watch_forks()
        # Create the file and its tables now: a bad path fails at start-up.
        with self.reading() as db:
            self._measure(db)

    def __repr__(self) -> str:
        return f"<Spool {str(self.path)!r}>"

    # -- connections --------------------------------------------------------

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
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    for statement in _TOTALS:
                        db.execute(statement)
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
            db.executemany("INSERT OR IGNORE INTO submissions VALUES "
                           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", submissions)
            db.executemany("INSERT OR IGNORE INTO dead_letters VALUES "
                           "(?, ?, ?, ?, ?, ?, ?, ?)", dead)
            db.executemany("INSERT OR IGNORE INTO people VALUES (?, ?, ?)", people)
            db.executemany("INSERT OR IGNORE INTO profile_marks VALUES (?, ?, ?)", marks)
            db.executemany("INSERT OR REPLACE INTO intakes VALUES (?, ?)", intakes)
        log.warning("klaviyo_middleware: carried %d queued submissions and %d dead letters "
                    "into the new spool file", len(submissions), len(dead))

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
                spool._intake_lock.acquire()
                held.append(spool._intake_lock)
                if spool._intake is not None:
                    held.extend(spool._intake.hold_for_fork())

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
        # The parent's intake stays the parent's; the child makes its own.
        if self._intake is not None:
            self._intake.after_fork_in_child()
        self._intake = None
        self._intake_lock = threading.Lock()

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
        self._retire_intake()
        with self.fork_guard:
            for db in self._connections.values():
                db.close()
            self._connections.clear()

    # -- the web side -------------------------------------------------------

    def enqueue(self, submission: Submission, now: float | None = None) -> None:
        """Commit a submission to this process's intake; raises
        :class:`SpoolFull` or ``sqlite3.Error``.

        Only this process writes its intake, so the visitor never waits for
        another process's work on the shared file. The sender moves it there
        at its next claim (:meth:`move_intake`).
        """
        now = time.time() if now is None else now
        # allow_nan=False: NaN and Infinity are not JSON and Klaviyo cannot
        # take them; a hook that put one in gets a ValueError here, at once,
        # rather than a submission that can never be delivered.
        payload = json.dumps(submission.to_dict(), separators=(",", ":"), allow_nan=False)
        # The shared file's size as last measured (at every claim): reading it
        # here would mean waiting on the shared file after all.
        intake = self._own_intake()
        try:
            self._add(intake, submission.id, payload, now)
        except IntakeGone:
            self._intake_replaced(intake)
            self._add(self._own_intake(), submission.id, payload, now)

    def _add(self, intake: Intake, submission_id: str, payload: str, now: float) -> None:
        try:
            intake.add(submission_id, self.account, payload, now, room=self._room(intake))
        except SpoolFull:
            # Measured at the last claim, which may be long ago (a sender
            # idle since it delivered a backlog): before refusing, look
            # again, with a read, which waits for no writer.
            with self.reading() as db:
                self._measure(db)
            intake.add(submission_id, self.account, payload, now, room=self._room(intake))

    def _measure(self, db: sqlite3.Connection) -> None:
        """Note the shared file's use, for the request path to judge room
        without reading the shared file (see :meth:`_room`)."""
        used, free = db.execute(
            "SELECT (page_count - freelist_count) * page_size, freelist_count * page_size "
            "FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()"
        ).fetchone()
        # Dead letters have a budget of their own: not counted against max_bytes.
        self._shared_used = max(0, int(used) - _dead_bytes(db))
        self._shared_free = int(free)

    def _room(self, intake: Intake) -> int:
        """Bytes this process may hold unmoved in its intake: what is left of
        ``max_bytes``, and what the disk can take while keeping
        :data:`DISK_RESERVE` free for delivery (one ``statvfs``, no lock)."""
        room = self.max_bytes - self._shared_used
        try:
            disk = os.statvfs(intake.path.parent)
        except OSError:
            return room
        reserve = _disk_reserve(disk)
        # Free pages inside the shared file take moved rows without the
        # disk growing (after a backlog is delivered, most of it is free).
        spare = disk.f_bavail * disk.f_frsize + self._shared_free - reserve
        # Each byte accepted takes one now (the intake) and DISK_PER_BYTE - 1
        # more when it moves; what is already held has paid the first.
        held = intake.unmoved_bytes
        return min(room, held + (spare - (DISK_PER_BYTE - 1) * held) // DISK_PER_BYTE)

    def _intake_replaced(self, intake: Intake) -> None:
        """This process's intake was deleted under it (an operator cleaning
        up ``spool.sqlite3*``). Its open connections still read the rows it
        held: move them into the shared file now, and start a new intake."""
        log.error("klaviyo_middleware: this process's intake %s was deleted or replaced while "
                  "in use; moving what it held into the spool and starting a new one",
                  intake.path)
        with self._intake_lock:
            if self._intake is intake:
                self._intake = None
        self._move_all(intake)
        with self.transaction() as db:
            db.execute("DELETE FROM intakes WHERE name = ?", (intake.name,))
        # Not remove(): whatever is at its path now is not its file.
        with self.fork_guard:
            intake.release()

    def prepare_intakes(self) -> None:
        """Create the intakes' directory now, so that a site whose spool
        directory is not writable fails at start-up, not at a visitor's post."""
        intake_directory(self.path).mkdir(mode=0o700, exist_ok=True)

    def _own_intake(self) -> Intake:
        intake = self._intake
        if intake is not None and intake.owned_here:
            return intake
        with self._intake_lock:
            if self._intake is None or not self._intake.owned_here:
                self._intake = Intake.create(self.path, self.durability, self.busy_timeout)
            return self._intake

    def move_intake(self) -> int:
        """Move what this process accepted into the shared file now (the
        claim does it too); the number of submissions moved."""
        intake = self._intake
        if intake is None or not intake.owned_here or not intake.has_unmoved:
            return 0
        return self._move_all(intake)[0]

    def _move_all(self, intake: Intake) -> tuple[int, int]:
        """Move everything ``intake`` holds, a batch per transaction, so that
        neither this process's memory nor the shared file's write lock grows
        with a backlog. The number moved, and the seq moved through."""
        moved = upto = 0
        while True:
            with self.transaction() as db:
                rows, upto = self._move(db, intake)
                self._measure(db)
            intake.moved(upto)
            moved += len(rows)
            if len(rows) < MOVE_BATCH:
                return moved, upto

    def _move(self, db: sqlite3.Connection, intake: Intake) -> tuple[list[Row], int]:
        """Inside a write transaction on the shared file: copy up to
        :data:`MOVE_BATCH` of the intake's rows not moved yet, and advance
        its watermark in the same commit. The rows, and the seq through which
        the intake is now moved."""
        found = db.execute("SELECT moved_through FROM intakes WHERE name = ?",
                           (intake.name,)).fetchone()
        rows, upto = intake.rows_after(found[0] if found else 0, MOVE_BATCH)
        if not rows:
            return rows, upto
        db.executemany(
            "INSERT OR IGNORE INTO submissions (id, account, payload, created_at, due_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(submission_id, account, payload, created_at, created_at)
             for _, submission_id, account, payload, created_at in rows])
        for _, _, account, payload, _ in rows:
            submission = _readable(payload)
            # Unreadable: the claim buries it, with the reason.
            if submission is not None:
                _add_people(db, account, submission)
        db.execute(
            "INSERT INTO intakes (name, moved_through) VALUES (?, ?) ON CONFLICT (name) "
            "DO UPDATE SET moved_through = excluded.moved_through", (intake.name, rows[-1][0]))
        return rows, upto

    def adopt_orphans(self) -> int:
        """Move what the intakes of ended processes hold into the shared file
        and remove them; the number of submissions moved."""
        moved = 0
        for path in intake_files(self.path):
            if path.name in self._unreadable_intakes:
                continue
            try:
                with self.fork_guard:
                    intake = Intake.adopt(path, self.durability, self.busy_timeout)
            except sqlite3.Error as exc:
                # Kept, not deleted: it may hold accepted submissions.
                self._unreadable_intakes.add(path.name)
                log.error("klaviyo_middleware: cannot read the intake %s (%s); left in place",
                          path, type(exc).__name__)
                continue
            if intake is None:
                continue  # its process is alive
            taken, _ = self._move_and_remove(intake)
            if taken:
                log.warning("klaviyo_middleware: took over %d submissions a stopped process "
                            "had accepted", taken)
            moved += taken
        return moved

    def _retire_intake(self) -> None:
        """Hand this process's intake over: moved and removed if the shared
        file takes its rows now, else left for another process to adopt."""
        with self._intake_lock:
            intake, self._intake = self._intake, None
        if intake is None or not intake.owned_here:
            return
        try:
            # Not removed if a visitor's submission arrived meanwhile: then
            # it is left to adoption.
            self._move_and_remove(intake)
        except Exception as exc:
            log.error("klaviyo_middleware: could not move this process's intake into the "
                      "spool (%s); another process will", type(exc).__name__)

    def _move_and_remove(self, intake: Intake) -> tuple[int, bool]:
        """Move everything ``intake`` holds into the shared file and remove
        it, unless a row was committed to it meanwhile (then it is only
        released, for adoption). The number moved, and whether it is gone."""
        try:
            moved, upto = self._move_all(intake)
            with self.fork_guard:
                removed = intake.remove(upto)
                if not removed:
                    intake.release()
        except BaseException:
            with self.fork_guard:
                intake.release()
            raise
        if removed:
            with self.transaction() as db:
                # After the file is gone, never before: the watermark is what
                # keeps its moved rows from being moved twice.
                db.execute("DELETE FROM intakes WHERE name = ?", (intake.name,))
        return moved, removed

    # -- the sender side ----------------------------------------------------

    def register_sender(self, owner: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO workers (owner, hostname, pid, heartbeat_at) "
                "VALUES (?, ?, ?, ?)",
                (owner, socket.gethostname(), os.getpid(), now),
            )

    def unregister_sender(self, owner: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE submissions SET lease_until = 0 WHERE lease_owner = ?", (owner,))
            db.execute("DELETE FROM workers WHERE owner = ?", (owner,))

    def release_dead_owners(self) -> int:
        """Free at once the leases of workers on this host whose process is gone."""
        released = 0
        host = socket.gethostname()
        with self.transaction() as db:
            rows = db.execute("SELECT owner, pid FROM workers WHERE hostname = ?", (host,))
            for owner, pid in rows.fetchall():
                if _process_alive(pid):
                    continue
                released += db.execute(
                    "UPDATE submissions SET lease_until = 0 WHERE lease_owner = ?", (owner,)
                ).rowcount
                db.execute("DELETE FROM workers WHERE owner = ?", (owner,))
        return released

    def claim(
        self, owner: str, limit: int, lease: float, now: float | None = None,
        due_by: float | None = None,
    ) -> list[Leased]:
        """Lease up to ``limit`` due submissions to ``owner`` for ``lease`` seconds.

        ``due_by`` (default: now) takes rows due until then: a probe during
        an outage takes the earliest one, however far its backoff put it.

        A row that cannot be read back (written by another version, or
        damaged) goes alone to the dead letters with the reason, in the same
        transaction, so that it can never hold back the rows leased with it.
        """
        now = time.time() if now is None else now
        claimed: list[Leased] = []
        intake = self._intake
        if intake is not None and not (intake.owned_here and intake.has_unmoved):
            intake = None
        upto = 0
        with self.transaction() as db:
            if intake is not None:
                # One transaction moves what this process accepted and claims.
                _, upto = self._move(db, intake)
            rows = db.execute(
                _CLAIM, (owner, now + lease, self.account, now if due_by is None else due_by,
                         now, now, limit),
            ).fetchall()
            for submission_id, payload, progress, attempts, created_at in rows:
                try:
                    claimed.append(Leased(
                        Submission.from_dict(json.loads(payload)),
                        Progress.from_dict(json.loads(progress)),
                        attempts,
                        created_at,
                    ))
                except Exception as exc:
                    self._bury_unreadable(db, submission_id, exc, now)
            self._measure(db)
        if intake is not None:
            intake.moved(upto)
        # In acceptance order: a round sends a person's submissions oldest first.
        claimed.sort(key=lambda item: (item.submission.accepted, item.created_at))
        return claimed

    def take_profile_turns(self, owner: str, items: list[Leased],
                           lease: float) -> dict[str, Turn]:
        """Each item may send its profile now: a claim never leases two
        submissions about one person to different owners while a profile is
        unsent. The marks say what newer submissions have sent."""
        turns = {}
        with self.reading() as db:
            for item in items:
                people = person_hashes(self.account, item.submission.profile)
                places = ", ".join("?" * len(people))
                marks = ("SELECT path, max(accepted) FROM profile_marks "  # noqa: S608
                         f"WHERE person IN ({places}) GROUP BY path")
                rows = db.execute(marks, people).fetchall() if people else []
                turns[item.submission.id] = Turn(0.0, {path: int(stamp) for path, stamp in rows})
        return turns

    def bring_forward(self, now: float | None = None) -> int:
        """Klaviyo answers again after an outage: what its failures (5xx,
        timeouts, no connection) put off is due now, all together, so that
        it goes out in bulk rather than as each backoff ends."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            return int(db.execute(
                "UPDATE submissions SET due_at = ? WHERE account = ? AND due_at > ? "  # noqa: S608
                f"AND {PUT_OFF_BY_OUTAGE}", (now, self.account, now)).rowcount)

    def postpone(self, owner: str, claimed: Leased, due_at: float) -> None:
        """Hand a submission back, due at ``due_at``; not a failed attempt."""
        with self.transaction() as db:
            db.execute(
                "UPDATE submissions SET progress = ?, due_at = ?, lease_owner = NULL, "
                "lease_until = 0 WHERE id = ? AND lease_owner = ?",
                (json.dumps(claimed.progress.to_dict()), due_at, claimed.submission.id, owner),
            )

    def _bury_unreadable(
        self, db: sqlite3.Connection, submission_id: str, exc: Exception, now: float
    ) -> None:
        # The exception's class only: its text may quote the payload.
        reason = f"the spool row could not be read ({type(exc).__name__})"
        log.error("klaviyo_middleware: submission %s dead-lettered: %s", submission_id, reason)
        db.execute(
            "INSERT OR REPLACE INTO dead_letters (id, account, payload, progress, attempts, "
            "created_at, dead_at, error) SELECT id, account, payload, progress, attempts, "
            "created_at, ?, ? FROM submissions WHERE id = ?",
            (now, json.dumps({"message": reason, "status": None, "code": "unreadable",
                              "detail": None, "pointer": None}), submission_id),
        )
        db.execute("DELETE FROM submissions WHERE id = ?", (submission_id,))
        db.execute("DELETE FROM people WHERE submission_id = ?", (submission_id,))
        self._keep_dead_letters_within_budget(db, now)

    def save_progress(
        self, owner: str, claimed: Leased, lease: float, now: float | None = None
    ) -> bool:
        """Record finished steps and extend the lease; ``False`` if the lease was lost."""
        return claimed.submission.id in self.save_progress_many(owner, [claimed], lease, now)

    def save_progress_many(
        self, owner: str, items: list[Leased], lease: float, now: float | None = None
    ) -> set[str]:
        """:meth:`save_progress` for many; returns the ids whose lease still held."""
        now = time.time() if now is None else now
        saved = set()
        with self.transaction() as db:
            for claimed in items:
                updated = db.execute(
                    "UPDATE submissions SET progress = ?, lease_until = ? "
                    "WHERE id = ? AND lease_owner = ? AND lease_until > ?",
                    (
                        json.dumps(claimed.progress.to_dict()),
                        now + lease,
                        claimed.submission.id,
                        owner,
                        now,
                    ),
                ).rowcount
                if updated:
                    saved.add(claimed.submission.id)
                    if PROFILE_STEP in claimed.progress.done:
                        _profile_sent(db, claimed.submission)
        return saved

    def complete(self, owner: str, claimed: Leased) -> None:
        self.complete_many(owner, [claimed])

    def complete_many(self, owner: str, items: list[Leased]) -> None:
        with self.transaction() as db:
            removed = 0
            for claimed in items:
                gone = db.execute(
                    "DELETE FROM submissions WHERE id = ? AND lease_owner = ?",
                    (claimed.submission.id, owner),
                ).rowcount
                if gone:
                    _profile_sent(db, claimed.submission)
                removed += gone
            if removed:
                db.execute(
                    "INSERT INTO counters (account, name, value) VALUES (?, 'delivered', ?) "
                    "ON CONFLICT (account, name) DO UPDATE SET value = value + excluded.value",
                    (self.account, removed),
                )

    def reschedule(
        self, owner: str, claimed: Leased, due_at: float, error: dict[str, Any]
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE submissions SET progress = ?, attempts = attempts + 1, due_at = ?, "
                "lease_owner = NULL, lease_until = 0, last_error = ? "
                "WHERE id = ? AND lease_owner = ?",
                (
                    json.dumps(claimed.progress.to_dict()),
                    due_at,
                    json.dumps(error),
                    claimed.submission.id,
                    owner,
                ),
            )

    def bury(
        self, owner: str, claimed: Leased, error: dict[str, Any], now: float | None = None
    ) -> None:
        """Move a submission to the dead letters with Klaviyo's error."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            removed = db.execute(
                "DELETE FROM submissions WHERE id = ? AND lease_owner = ?",
                (claimed.submission.id, owner),
            ).rowcount
            if removed:
                # Its profile will not be sent: nobody waits for it any more.
                db.execute("DELETE FROM people WHERE submission_id = ?",
                           (claimed.submission.id,))
                db.execute(
                    "INSERT OR REPLACE INTO dead_letters (id, account, payload, progress, "
                    "attempts, created_at, dead_at, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        claimed.submission.id,
                        self.account,
                        json.dumps(claimed.submission.to_dict(), separators=(",", ":")),
                        json.dumps(claimed.progress.to_dict()),
                        claimed.attempts + 1,
                        claimed.created_at,
                        now,
                        json.dumps(error),
                    ),
                )
                self._keep_dead_letters_within_budget(db, now)

    def _keep_dead_letters_within_budget(self, db: sqlite3.Connection, now: float) -> None:
        """Past ``dead_max_bytes``, delete the oldest dead letters: a flood of
        posts Klaviyo will always refuse must never turn real visitors away
        (nor, since dead letters hold personal data, be kept without bound)."""
        over = _dead_bytes(db) - self.dead_max_bytes
        evicted = 0
        while over > 0:
            # A dead letter's weight: its JSON, written with ensure_ascii, so
            # characters are bytes (as the triggers count them).
            rows = db.execute("SELECT id, length(payload) + length(progress) + length(error) "
                              "FROM dead_letters ORDER BY dead_at LIMIT 100").fetchall()
            if not rows:
                break
            for dead_id, size in rows:
                db.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,))
                evicted += 1
                over -= size
                if over <= 0:
                    break
        if not evicted:
            return
        db.execute("INSERT INTO totals (name, value) VALUES ('dead_evicted', ?) "
                   "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (evicted,))
        if now - self._evictions_logged_at >= 60:
            self._evictions_logged_at = now
            log.warning("klaviyo_middleware: the dead letters passed dead_letter_max_size "
                        "(%d bytes); the %d oldest were deleted to make room (spool stats: "
                        "dead_evicted counts them all)", self.dead_max_bytes, evicted)

    # -- account-wide pause after a 429 ------------------------------------

    def pause(self, seconds: float, now: float | None = None) -> None:
        """Pause delivery for the account for ``seconds`` (a pause only grows)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute(
                "INSERT INTO pauses (account, until) VALUES (?, ?) "
                "ON CONFLICT (account) DO UPDATE SET until = max(until, excluded.until)",
                (self.account, now + seconds),
            )

    def paused_for(self, now: float | None = None) -> float:
        """Seconds the account's pause still lasts; 0 when not paused."""
        now = time.time() if now is None else now
        with self.reading() as db:
            row = db.execute(
                "SELECT until FROM pauses WHERE account = ?", (self.account,)
            ).fetchone()
        return max(0.0, float(row[0]) - now) if row else 0.0

    # -- rate limits --------------------------------------------------------

    def take_rate_slot(
        self, endpoint: str, limits: tuple[tuple[float, int], ...], now: float | None = None
    ) -> float:
        """Record a call to ``endpoint`` if every ``(window, limit)`` allows it.

        Returns 0 when the call may go ahead (and counts it), else the seconds
        until it may. The log is a sliding window, so no interval of any
        alignment holds more than ``limit`` calls — Klaviyo's fixed windows
        cannot be exceeded whatever their phase.
        """
        now = time.time() if now is None else now
        longest = max(window for window, _ in limits)
        with self.transaction() as db:
            db.execute(
                "DELETE FROM rate_log WHERE account = ? AND endpoint = ? AND at <= ?",
                (self.account, endpoint, now - longest),
            )
            wait = 0.0
            for window, limit in limits:
                rows = db.execute(
                    "SELECT at FROM rate_log WHERE account = ? AND endpoint = ? AND at > ? "
                    "ORDER BY at DESC LIMIT 1 OFFSET ?",
                    (self.account, endpoint, now - window, limit - 1),
                ).fetchone()
                if rows is not None:
                    # The limit-th most recent call leaves the window at at + window.
                    wait = max(wait, rows[0] + window - now)
            if wait > 0:
                return wait
            db.execute(
                "INSERT INTO rate_log (account, endpoint, at) VALUES (?, ?, ?)",
                (self.account, endpoint, now),
            )
        return 0.0

    # -- keeping personal data no longer than needed -----------------------

    def expire_dead_letters(self, max_age: float, now: float | None = None) -> int:
        """Delete this account's dead letters older than ``max_age`` seconds."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            expired = db.execute(
                "DELETE FROM dead_letters WHERE account = ? AND dead_at <= ?",
                (self.account, now - max_age),
            ).rowcount
        if expired:
            log.info("klaviyo_middleware: purged %d dead letters older than %s days",
                     expired, f"{max_age / 86400:g}")
        return int(expired)

    def prune_marks(self, now: float | None = None) -> int:
        """Drop the profile marks no waiting submission needs any more: those
        of people with no older submission still to send a profile, once
        :data:`MARK_GRACE` has passed (an older one may still be on its way
        from another process's intake)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            return int(db.execute(
                "DELETE FROM profile_marks WHERE accepted < ? AND NOT EXISTS (SELECT 1 "
                "FROM people WHERE people.person = profile_marks.person "
                "AND people.accepted < profile_marks.accepted)",
                (int((now - MARK_GRACE) * 1_000_000),)).rowcount)

    def take_turn(self, task: str, every: float, now: float | None = None) -> bool:
        """Whether this process should do ``task`` now: ``True`` for one
        process on the spool at most once every ``every`` seconds."""
        now = time.time() if now is None else now
        if self.turn_free_in(task, every, now) > 0:
            return False
        with self.transaction() as db:
            return db.execute(
                "INSERT INTO housekeeping (task, at) VALUES (?, ?) ON CONFLICT (task) "
                "DO UPDATE SET at = excluded.at WHERE housekeeping.at <= ?",
                (task, now, now - every)).rowcount == 1

    def turn_free_in(self, task: str, every: float, now: float | None = None) -> float:
        """Seconds until someone may take the turn at ``task``; 0 when free."""
        now = time.time() if now is None else now
        with self.reading() as db:
            row = db.execute("SELECT at FROM housekeeping WHERE task = ?", (task,)).fetchone()
        return 0.0 if row is None else max(0.0, row[0] + every - now)

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

    # -- inspection ---------------------------------------------------------

    def dead_letters(self) -> list[DeadLetter]:
        with self.reading() as db:
            rows = db.execute(
                "SELECT id, payload, progress, attempts, created_at, dead_at, error "
                "FROM dead_letters WHERE account = ? ORDER BY dead_at",
                (self.account,),
            ).fetchall()
        return [dead_letter_of(row) for row in rows]

    def outstanding(self, now: float | None = None) -> int:
        """Submissions not yet delivered or dead (for ``flush``): in the
        shared file and in this process's intake."""
        with self.reading() as db:
            (count,) = db.execute(
                "SELECT count(*) FROM submissions WHERE account = ?", (self.account,)
            ).fetchone()
        return int(count) + self.unmoved()

    def unmoved(self) -> int:
        """Submissions this process accepted and has not moved yet."""
        intake = self._intake
        return intake.unmoved_rows if intake is not None and intake.owned_here else 0

    def tidy_intake(self) -> None:
        """When idle: drop moved rows from this process's intake and cut its
        log, so that nothing delivered lingers there."""
        intake = self._intake
        if intake is not None and intake.owned_here and not intake.has_unmoved:
            intake.drop_moved()
            # On a disk short of its reserve, the log's space is what new
            # visitors need: cut it now, not at the next minute.
            intake.empty_log(force=_disk_low(intake.path.parent))

    def next_due(self) -> float | None:
        if self.unmoved():
            return time.time()
        with self.reading() as db:
            row = db.execute(
                "SELECT min(max(due_at, lease_until)) FROM submissions WHERE account = ?",
                (self.account,),
            ).fetchone()
        return float(row[0]) if row and row[0] is not None else None


# Lease the due rows, oldest first, except those about a person another row
# is sending a profile for right now: one leased with its profile unsent.
_CLAIM = (
    "UPDATE submissions SET lease_owner = ?, lease_until = ? "
    "WHERE id IN (SELECT id FROM submissions WHERE account = ? AND due_at <= ? "
    "AND lease_until <= ? AND NOT EXISTS ("
    "SELECT 1 FROM people AS mine JOIN people AS other ON other.person = mine.person "
    "AND other.submission_id != mine.submission_id JOIN submissions AS busy "
    "ON busy.id = other.submission_id AND busy.lease_until > ? "
    "WHERE mine.submission_id = submissions.id) "
    "ORDER BY due_at LIMIT ?) "
    "RETURNING id, payload, progress, attempts, created_at"
)


def watermarks_of(db: sqlite3.Connection) -> dict[str, int]:
    """How far each intake is moved into the shared file, by intake name."""
    return dict(db.execute("SELECT name, moved_through FROM intakes").fetchall())


def _disk_reserve(disk: os.statvfs_result) -> int:
    """What :data:`DISK_RESERVE` is on this filesystem (half of a small one)."""
    return min(DISK_RESERVE, disk.f_blocks * disk.f_frsize // 2)


def _disk_low(folder: Path) -> bool:
    try:
        disk = os.statvfs(folder)
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < _disk_reserve(disk)


def _dead_bytes(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM totals WHERE name = 'dead_bytes'").fetchone()
    return int(row[0]) if row else 0


def _readable(payload: str) -> Submission | None:
    try:
        return Submission.from_dict(json.loads(payload))
    except Exception:
        return None


def _add_people(db: sqlite3.Connection, account: str, submission: Submission) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO people (submission_id, person, accepted) VALUES (?, ?, ?)",
        [(submission.id, person, submission.accepted)
         for person in person_hashes(account, submission.profile)],
    )


def readd_people(db: sqlite3.Connection, account: str, payload: str, progress: str) -> None:
    """A dead letter back in the queue takes its place in its person's order
    again, unless its profile was already sent."""
    try:
        submission = Submission.from_dict(json.loads(payload))
        done = Progress.from_dict(json.loads(progress)).done
    except Exception:
        return  # unreadable: the claim buries it again, with the reason
    if PROFILE_STEP not in done:
        _add_people(db, account, submission)


def _profile_sent(db: sqlite3.Connection, submission: Submission) -> None:
    """The submission's profile is in Klaviyo (or will never be sent): it no
    longer holds its people, and the marks tell any older submission about
    one of them what not to send over this — one waiting here, or one still
    in another process's intake (kept :data:`MARK_GRACE` for that)."""
    rows = db.execute("DELETE FROM people WHERE submission_id = ? RETURNING person",
                      (submission.id,)).fetchall()
    for (person,) in rows:
        db.executemany(
            "INSERT INTO profile_marks (person, path, accepted) VALUES (?, ?, ?) "
            "ON CONFLICT (person, path) DO UPDATE SET accepted = max(accepted, excluded.accepted)",
            [(person, path, submission.accepted)
             for path in attribute_paths(submission.profile)],
        )


def dead_letter_of(row: tuple[Any, ...]) -> DeadLetter:
    submission_id, payload, progress, attempts, created_at, dead_at, error = row
    return DeadLetter.read(submission_id, _loaded(payload), _loaded(progress), attempts,
                           created_at, dead_at, json.loads(error))


def _loaded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


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


# A sender re-registers every 5 s; one silent for a minute on another host is gone.
WORKER_SILENCE = 60.0


def live_workers(db: sqlite3.Connection, now: float) -> int:
    """Senders that are running: on this host, those whose process lives
    (a killed one leaves its row until another sender's housekeeping);
    elsewhere, those heard from within :data:`WORKER_SILENCE`."""
    host = socket.gethostname()
    rows = db.execute("SELECT hostname, pid, heartbeat_at FROM workers").fetchall()
    return sum(1 for hostname, pid, heartbeat in rows
               if (_process_alive(pid) if hostname == host else now - heartbeat < WORKER_SILENCE))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

