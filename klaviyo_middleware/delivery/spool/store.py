"""The durable spool: submissions in SQLite until Klaviyo has them (design.md §3).

One file, in WAL mode, shared by every process of a site (the server
processes of gunicorn or uWSGI, the CLI). A submission is committed here
before the visitor gets an answer. Senders *lease* what they deliver: a lease names its owner
and expires, so a process killed with SIGKILL loses nothing — its submissions
become claimable again when the lease runs out, or at once when the owner is
seen to be dead.

Rows carry an ``account`` fingerprint (a hash of API URL and key) so that two
sites sharing a spool file by mistake never deliver each other's submissions
with the wrong key.

Everything that must be consistent across processes — claims, the
account-wide pause after a 429, rate-limit bookkeeping — happens inside
``BEGIN IMMEDIATE`` transactions, which SQLite serialises between processes.

This module is the lease store the courier uses
(:class:`~klaviyo_middleware.delivery.courier.LeaseStore`); under it,
:mod:`~klaviyo_middleware.delivery.spool.moves` takes submissions into each
process's intake and moves them into the shared file, and
:mod:`~klaviyo_middleware.delivery.spool.file` keeps the file itself (its
tables in :mod:`~klaviyo_middleware.delivery.spool.schema`, a connection
per thread, forks, a file replaced under a running site). Operators'
queries are :mod:`~klaviyo_middleware.delivery.spool.admin`'s. What is
left here (about 600 lines) is one or two SQL statements for each operation
the courier needs of a lease store, kept together because they share the
tables' invariants (leases, people, marks, budgets).

A person's profiles are written in acceptance order
(:mod:`klaviyo_middleware.model.profile_order`): ``people`` lists, for each
submission whose profile is still to send, the (hashed) people it is about,
and a claim never leases one while another submission about the same person
is leased with its profile unsent. ``profile_marks`` records what a newer
profile has sent, for as long as an older one about that person waits.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from typing import Any

from klaviyo_middleware.delivery.dead_letters import DeadLetter
from klaviyo_middleware.delivery.spool.file import (
    DURABILITY,
    ENV_SPOOL_PATH,
    NotASpool,
    SpoolFile,
    check_is_spool,
    default_spool_path,
)
from klaviyo_middleware.delivery.spool.intake import SpoolFull
from klaviyo_middleware.delivery.spool.moves import (
    DISK_PER_BYTE,
    DISK_RESERVE,
    MOVE_BATCH,
    IntakeSpool,
    add_people,
    dead_bytes,
)
from klaviyo_middleware.klaviyo.steps import PROFILE_STEP
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.profile_order import Turn, attribute_paths, person_hashes
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

# Seconds a profile mark outlives every submission that needed it. A process
# moves what it accepted into the shared file within moments, unless it is
# stopped (then another adopts its intake within seconds) or stalled; an
# older submission about the same person arriving from there within this
# time still gives way to what a newer one sent.
MARK_GRACE = 600.0

PUT_OFF_BY_OUTAGE = ("last_error IS NOT NULL "
                      "AND coalesce(json_extract(last_error, '$.status'), 500) >= 500 "
                      "AND json_extract(last_error, '$.isolated') IS NULL")



class Spool(IntakeSpool):
    """The lease store: every query the senders make on the shared file.

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
        self.dead_max_bytes = dead_max_bytes
        self._evictions_logged_at = 0.0
        super().__init__(path, account, durability=durability, max_bytes=max_bytes,
                         busy_timeout=busy_timeout)
        # Create the file and its tables now: a bad path fails at start-up.
        with self.reading() as db:
            self._measure(db)

    def __repr__(self) -> str:
        return f"<Spool {str(self.path)!r}>"

    # -- the sender side ----------------------------------------------------

    def register_sender(self, owner: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO senders (owner, hostname, pid, heartbeat_at, account) "
                "VALUES (?, ?, ?, ?, ?)",
                (owner, socket.gethostname(), os.getpid(), now, self.account),
            )

    def unregister_sender(self, owner: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE submissions SET lease_until = 0 WHERE lease_owner = ?", (owner,))
            db.execute("DELETE FROM senders WHERE owner = ?", (owner,))

    def release_dead_owners(self) -> int:
        """Free at once the leases of senders on this host whose process is gone."""
        released = 0
        host = socket.gethostname()
        with self.transaction() as db:
            rows = db.execute("SELECT owner, pid FROM senders WHERE hostname = ?", (host,))
            for owner, pid in rows.fetchall():
                if _process_alive(pid):
                    continue
                released += db.execute(
                    "UPDATE submissions SET lease_until = 0 WHERE lease_owner = ?", (owner,)
                ).rowcount
                db.execute("DELETE FROM senders WHERE owner = ?", (owner,))
        return released

    def adopt_refused_accounts(self, now: float | None = None) -> int:
        """Take over what an account whose key Klaviyo refused (401, 403)
        holds, when no running sender delivers for it: a site restarted with
        its key corrected delivers everything the wrong key held (the rows
        carry the old key's fingerprint). An account still running keeps its
        rows, so two sites sharing a file by mistake never take each other's.
        The number of submissions taken over."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            refused = [row[0] for row in db.execute(
                "SELECT DISTINCT account FROM submissions WHERE account != ? AND "
                "json_extract(last_error, '$.status') IN (401, 403)", (self.account,))]
            if not refused:
                return 0
            running = running_accounts(db, now)
            taken = 0
            for account in refused:
                if account in running:
                    continue
                taken += db.execute(
                    "UPDATE submissions SET account = ?, due_at = ?, last_error = NULL "
                    "WHERE account = ? AND lease_until < ?",
                    (self.account, now, account, now)).rowcount
        if taken:
            log.warning("klaviyo_middleware: took over %d submissions held while Klaviyo "
                        "refused the API key they were accepted under; they go with this "
                        "key now", taken)
        return taken

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
        claimed.sort(key=lambda item: (item.submission.accepted_at, item.created_at))
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
                marks = ("SELECT path, max(accepted_at) FROM profile_marks "  # noqa: S608
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
        over = dead_bytes(db) - self.dead_max_bytes
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
                "DELETE FROM profile_marks WHERE accepted_at < ? AND NOT EXISTS (SELECT 1 "
                "FROM people WHERE people.person = profile_marks.person "
                "AND people.accepted_at < profile_marks.accepted_at)",
                (int((now - MARK_GRACE) * 1_000_000),)).rowcount)

    def take_turn(self, task: str, every: float, now: float | None = None) -> bool:
        """Whether this process should do ``task`` now: ``True`` for one
        process on the spool at most once every ``every`` seconds."""
        now = time.time() if now is None else now
        # A read first: most looks find the turn taken, and need no write.
        return self.turn_free_in(task, every, now) <= 0 and self.claim_turn(task, every, now)

    def claim_turn(self, task: str, every: float, now: float) -> bool:
        """Take the turn at ``task`` if nobody took it in the last ``every``
        seconds (decided in the write itself), for a caller that has just
        looked with :meth:`turn_free_in`."""
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


def readd_people(db: sqlite3.Connection, account: str, payload: str, progress: str) -> None:
    """A dead letter back in the queue takes its place in its person's order
    again, unless its profile was already sent."""
    try:
        submission = Submission.from_dict(json.loads(payload))
        done = Progress.from_dict(json.loads(progress)).done
    except Exception:
        return  # unreadable: the claim buries it again, with the reason
    if PROFILE_STEP not in done:
        add_people(db, account, submission)


def _profile_sent(db: sqlite3.Connection, submission: Submission) -> None:
    """The submission's profile is in Klaviyo (or will never be sent): it no
    longer holds its people, and the marks tell any older submission about
    one of them what not to send over this — one waiting here, or one still
    in another process's intake (kept :data:`MARK_GRACE` for that)."""
    rows = db.execute("DELETE FROM people WHERE submission_id = ? RETURNING person",
                      (submission.id,)).fetchall()
    for (person,) in rows:
        db.executemany(
            "INSERT INTO profile_marks (person, path, accepted_at) VALUES (?, ?, ?) "
            "ON CONFLICT (person, path) DO UPDATE SET "
            "accepted_at = max(accepted_at, excluded.accepted_at)",
            [(person, path, submission.accepted_at)
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


# A sender re-registers every 5 s; one silent for a minute on another host is gone.
SENDER_SILENCE = 60.0


def _running(db: sqlite3.Connection, now: float) -> list[str]:
    """The accounts of the senders that are running: on this host, those
    whose process lives (a killed one leaves its row until another sender's
    housekeeping); elsewhere, those heard from within :data:`SENDER_SILENCE`."""
    host = socket.gethostname()
    rows = db.execute("SELECT hostname, pid, heartbeat_at, account FROM senders").fetchall()
    return [account for hostname, pid, heartbeat, account in rows
            if (_process_alive(pid) if hostname == host else now - heartbeat < SENDER_SILENCE)]


def live_senders(db: sqlite3.Connection, now: float) -> int:
    """How many senders are running (see :func:`_running`)."""
    return len(_running(db, now))


def running_accounts(db: sqlite3.Connection, now: float) -> set[str]:
    """The accounts some running sender delivers for."""
    return set(_running(db, now))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True



__all__ = [
    "DISK_PER_BYTE", "DISK_RESERVE", "DURABILITY", "ENV_SPOOL_PATH", "MOVE_BATCH", "NotASpool",
    "Spool", "SpoolFile", "SpoolFull", "check_is_spool", "default_spool_path",
]
