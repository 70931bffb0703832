"""Operator queries over a whole spool file: ``klaviyo-middleware spool ...``.

Statistics, dead letters (list, retry, purge), lifting a pause and erasing a
person, across every account in the file, through the spool's public seam
(:meth:`Spool.reading`, :meth:`Spool.transaction`) while its senders keep
running.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from klaviyo_middleware.delivery.dead_letters import DeadLetter, relisted
from klaviyo_middleware.delivery.spool.intake import (
    empty_log_of,
    intake_files,
    unmoved_summary,
    writing_to,
)
from klaviyo_middleware.delivery.spool.store import (
    PUT_OFF_BY_OUTAGE,
    Spool,
    check_is_spool,
    dead_letter_of,
    live_senders,
    readd_people,
    watermarks_of,
)
from klaviyo_middleware.model.profile_order import person_hashes


class SpoolAdmin:
    """Operator queries over a whole spool file, every account included.

    Used by ``klaviyo-middleware spool ...``; no API key is needed, and the
    site's server processes may keep running meanwhile.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(f"no spool at {path}")
        check_is_spool(path)
        self.spool = Spool(path, account="")

    def stats(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        with self.spool.reading() as db:
            stats = self._stats(db, now)
            watermarks = watermarks_of(db)
        # Accepted by a process and not yet moved into the shared file: due.
        arriving = 0
        for path in intake_files(self.spool.path):
            # An intake removed or unreadable meanwhile counts as empty here.
            with contextlib.suppress(sqlite3.Error), self.spool.fork_guard:
                count, oldest = unmoved_summary(path, watermarks.get(path.stem, 0))
                arriving += count
                if oldest is not None:
                    age = round(now - oldest, 3)
                    stats["oldest_pending_age"] = max(age, stats["oldest_pending_age"] or 0.0)
        stats["pending"] += arriving
        stats["due"] += arriving
        stats["arriving"] = arriving
        return stats

    @staticmethod
    def _stats(db: sqlite3.Connection, now: float) -> dict[str, Any]:
        pending, due, leased, retrying, oldest = db.execute(
            "SELECT count(*), coalesce(sum(due_at <= ?), 0), coalesce(sum(lease_until >= ?), 0), "
            "coalesce(sum(attempts > 0), 0), min(created_at) FROM submissions",
            (now, now),
        ).fetchone()
        (dead,) = db.execute("SELECT count(*) FROM dead_letters").fetchone()
        totals = dict(db.execute("SELECT name, value FROM totals").fetchall())
        (delivered,) = db.execute(
            "SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'delivered'"
        ).fetchone()
        (paused,) = db.execute("SELECT coalesce(max(until), 0) FROM pauses").fetchone()
        senders = live_senders(db, now)
        return {
            "pending": pending,
            "due": due,
            "in_flight": leased,
            "retrying": retrying,
            "dead": dead,
            # The dead letters' budget (dead_letter_max_size), and how many
            # of the oldest were deleted to keep within it.
            "dead_bytes": totals.get("dead_bytes", 0),
            "dead_evicted": totals.get("dead_evicted", 0),
            "delivered": delivered,
            "oldest_pending_age": None if oldest is None else round(now - oldest, 3),
            "paused_for": max(0.0, round(paused - now, 3)),
            "senders": senders,
        }

    def dead_letters(self) -> list[DeadLetter]:
        with self.spool.reading() as db:
            rows = db.execute(
                "SELECT id, payload, progress, attempts, created_at, dead_at, error "
                "FROM dead_letters ORDER BY dead_at"
            ).fetchall()
        return [dead_letter_of(row) for row in rows]

    def retry(self, ids: list[str] | None = None, now: float | None = None,
              relist: tuple[str, str] | None = None) -> int:
        """Move dead letters (all, or ``ids``) back into the spool, due at once.

        ``relist=(old, new)`` retries only those naming list ``old``, sent to
        list ``new`` instead (a list id that does not exist, put right)."""
        now = time.time() if now is None else now
        select = "SELECT id, account, payload, progress FROM dead_letters"
        with self.spool.transaction() as db:
            if ids is None:
                rows = db.execute(select).fetchall()
            else:
                rows = [
                    row
                    for submission_id in ids
                    for row in db.execute(select + " WHERE id = ?", (submission_id,))
                ]
            if relist is not None:
                rows = [(submission_id, account, json.dumps(changed), progress)
                        for submission_id, account, payload, progress in rows
                        if (changed := relisted(json.loads(payload), *relist)) is not None]
            for submission_id, account, payload, progress in rows:
                # Finished steps stay finished: a retry never re-subscribes.
                db.execute(
                    "INSERT OR REPLACE INTO submissions (id, account, payload, progress, "
                    "created_at, due_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (submission_id, account, payload, progress, now, now),
                )
                db.execute("DELETE FROM dead_letters WHERE id = ?", (submission_id,))
                readd_people(db, account, payload, progress)
        return len(rows)

    def resume(self, now: float | None = None) -> float:
        """Lift every account's pause, and bring forward what a 429 or an
        outage (5xx, timeouts, no connection) postponed, as the senders do
        when Klaviyo answers again; returns the seconds the pause had left."""
        now = time.time() if now is None else now
        with self.spool.transaction() as db:
            (until,) = db.execute("SELECT coalesce(max(until), 0) FROM pauses").fetchone()
            db.execute("DELETE FROM pauses")
            db.execute(
                "UPDATE submissions SET due_at = ? WHERE due_at > ? AND ("  # noqa: S608
                f"json_extract(last_error, '$.status') = 429 OR {PUT_OFF_BY_OUTAGE})",
                (now, now),
            )
        return max(0.0, float(until) - now)

    def purge(
        self,
        ids: list[str] | None = None,
        older_than: float | None = None,
        now: float | None = None,
    ) -> int:
        """Delete dead letters (all, ``ids``, or dead for over ``older_than`` seconds)."""
        now = time.time() if now is None else now
        cutoff = now - older_than if older_than is not None else float("inf")
        with self.spool.transaction() as db:
            if ids is None:
                return int(
                    db.execute("DELETE FROM dead_letters WHERE dead_at <= ?", (cutoff,)).rowcount
                )
            return sum(
                db.execute(
                    "DELETE FROM dead_letters WHERE id = ? AND dead_at <= ?",
                    (submission_id, cutoff),
                ).rowcount
                for submission_id in ids
            )

    def forget(self, *, email: str | None = None,
               phone_number: str | None = None) -> dict[str, int]:
        """Erase every queued submission and dead letter about a person, in
        every account, found by email address (any case) or phone number
        (E.164); the counts removed. Deleted rows are zeroed in the file
        (secure_delete) and the write-ahead log is emptied."""
        if not email and not phone_number:
            raise ValueError("forget needs an email address or a phone number")
        match = ("(lower(json_extract(payload, '$.profile.email')) = lower(?) "
                 "OR json_extract(payload, '$.profile.phone_number') = ?)")
        values = (email or "", phone_number or "")
        person = {"email": email, "phone_number": phone_number}
        with self.spool.transaction() as db:
            # Intakes too, while holding the shared file's write lock: a
            # process moves its intake only while holding it, so nothing
            # erased here can be on its way into the shared file meanwhile.
            arriving = 0
            watermarks = watermarks_of(db)
            for path in intake_files(self.spool.path):
                try:
                    with writing_to(path, self.spool.busy_timeout) as intake:
                        arriving += intake.execute(
                            f"DELETE FROM intake WHERE {match} AND seq > ?",  # noqa: S608
                            (*values, watermarks.get(path.stem, 0))).rowcount
                        # Moved rows not dropped yet: counted in the shared file.
                        intake.execute(f"DELETE FROM intake WHERE {match}", values)  # noqa: S608
                except sqlite3.OperationalError:
                    if path.exists():
                        raise  # not erased: say so rather than report success
            queued = db.execute(f"DELETE FROM submissions WHERE {match}", values).rowcount  # noqa: S608
            queued += arriving
            dead = db.execute(f"DELETE FROM dead_letters WHERE {match}", values).rowcount  # noqa: S608
            db.execute("DELETE FROM people WHERE submission_id NOT IN (SELECT id FROM submissions)")
            accounts = [row[0] for row in db.execute(
                "SELECT account FROM submissions UNION SELECT account FROM dead_letters "
                "UNION SELECT account FROM counters UNION SELECT account FROM pauses")]
            for account in accounts:
                for hashed in person_hashes(account, person):
                    db.execute("DELETE FROM profile_marks WHERE person = ?", (hashed,))
        self.spool.truncate_wal()
        for path in intake_files(self.spool.path):
            with self.spool.fork_guard:
                empty_log_of(path)
        return {"queued": int(queued), "dead": int(dead)}

    def close(self) -> None:
        self.spool.close()
