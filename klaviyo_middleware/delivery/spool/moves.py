"""Accepting into this process's intake and moving it into the shared file.

A visitor's submission is committed to the process's own intake
(:mod:`~klaviyo_middleware.delivery.spool.intake`), so the request path
never waits on another process's work on the shared file; the sender moves
it into the shared file in batches (:data:`MOVE_BATCH`), and the intakes of
stopped processes are adopted by the living. Room is judged without
touching the shared file: its use as last measured, and the disk's spare
room (:data:`DISK_RESERVE` kept for delivery's own writes).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from klaviyo_middleware.delivery.spool.file import SpoolFile
from klaviyo_middleware.delivery.spool.intake import (
    Intake,
    IntakeGone,
    Row,
    SpoolFull,
    intake_directory,
    intake_files,
)
from klaviyo_middleware.model.profile_order import person_hashes
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

# Rows moved from an intake per transaction on the shared file: a backlog
# (a sender held up) moves in steps, never all in memory or under one lock.
MOVE_BATCH = 1000
# Room kept free on the spool's filesystem for delivery's own writes (leases,
# progress, moving rows out of the intakes, the write-ahead logs): new
# submissions are refused before the disk is full, never delivery's writes.
# Half of a small filesystem at most.
DISK_RESERVE = 16 * 1024 * 1024
# An accepted byte on disk: in the intake, then moved into the shared file
# and its log, then zeroed out of the intake through the intake's log.
DISK_PER_BYTE = 4


class IntakeSpool(SpoolFile):
    """A spool file with this process's intake beside it (see the module)."""

    def __init__(self, path: str | os.PathLike[str], account: str, *,
                 durability: str = "full", max_bytes: int = 256 * 1024 * 1024,
                 busy_timeout: float = 30.0) -> None:
        self.account = account
        self.max_bytes = max_bytes
        # This process's own intake (intake.py), made at its first submission.
        self._intake: Intake | None = None
        self._intake_lock = threading.Lock()
        self._unreadable_intakes: set[str] = set()
        super().__init__(path, durability=durability, busy_timeout=busy_timeout)

    def _hold_for_fork(self) -> list[threading.Lock]:
        # In the order a sender takes them: a sender moving rows holds the
        # spool's guard and waits for the intake's.
        self._intake_lock.acquire()
        held = [self._intake_lock]
        if self._intake is not None:
            held.extend(self._intake.hold_for_fork())
        return held

    def _after_fork(self) -> None:
        # The parent's intake stays the parent's; the child makes its own.
        if self._intake is not None:
            self._intake.after_fork_in_child()
        self._intake = None
        self._intake_lock = threading.Lock()

    def _before_closing_all(self) -> None:
        self._retire_intake()

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
        self._shared_used = max(0, int(used) - dead_bytes(db))
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
                add_people(db, account, submission)
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


def _disk_reserve(disk: os.statvfs_result) -> int:
    """What :data:`DISK_RESERVE` is on this filesystem (half of a small one)."""
    return min(DISK_RESERVE, disk.f_blocks * disk.f_frsize // 2)


def _disk_low(folder: Path) -> bool:
    try:
        disk = os.statvfs(folder)
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < _disk_reserve(disk)


def dead_bytes(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM totals WHERE name = 'dead_bytes'").fetchone()
    return int(row[0]) if row else 0


def _readable(payload: str) -> Submission | None:
    try:
        return Submission.from_dict(json.loads(payload))
    except Exception:
        return None


def add_people(db: sqlite3.Connection, account: str, submission: Submission) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO people (submission_id, person, accepted_at) VALUES (?, ?, ?)",
        [(submission.id, person, submission.accepted_at)
         for person in person_hashes(account, submission.profile)],
    )
