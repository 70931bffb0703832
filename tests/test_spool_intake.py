"""Each process's intake: the request path writes only its own file (issue 15).

The visitor's commit never waits on the shared spool file; the sender moves
accepted rows into it exactly once, and a stopped process's intake is taken
over by another (docs/design.md, "Many processes on one spool").
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from webtest import TestApp

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.admin import SpoolAdmin
from klaviyo_middleware.delivery.spool.intake import intake_directory, intake_files
from klaviyo_middleware.delivery.spool.store import Spool

from spool_process import start
from support.factories import identify, submission
from support.klaviyo_fake import API_KEY
from support.waiting import wait_for


def queued_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT id FROM submissions ORDER BY id")]


def test_a_visitor_is_accepted_while_another_process_holds_the_shared_file(tmp_path):
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, "acct", busy_timeout=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's sender, mid-transaction
    item = submission(1)
    try:
        spool.enqueue(item)  # before intakes: "database is locked" after 0.2 s
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert spool.outstanding() == 1
    assert spool.move_intake() == 1
    assert queued_ids(path) == [item.id]


def test_accepted_rows_are_moved_once_and_claimed_in_the_same_transaction(tmp_path):
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, "acct")
    accepted = [submission(number) for number in range(5)]
    for item in accepted:
        spool.enqueue(item)
    assert queued_ids(path) == []  # still in this process's intake
    claimed = spool.claim("me", 3, 30.0)
    assert len(claimed) == 3 and len(queued_ids(path)) == 5
    assert spool.move_intake() == 0  # nothing moves twice
    assert sorted(queued_ids(path)) == sorted(item.id for item in accepted)


def test_a_process_that_died_between_the_two_commits_has_nothing_moved_twice(tmp_path):
    """The shared file's watermark is written with the moved rows: an intake
    whose rows were moved but not yet dropped adopts to nothing."""
    path = tmp_path / "spool.sqlite3"
    dying = Spool(path, "acct")
    accepted = [submission(number) for number in range(5)]
    for item in accepted[:4]:
        dying.enqueue(item)
    assert dying.move_intake() == 4
    dying.enqueue(accepted[4])  # accepted, not moved
    intake = dying._intake
    assert intake is not None
    intake.release()  # as SIGKILL would: the file stays, the lock goes
    (file,) = intake_files(path)
    with sqlite3.connect(file) as db:
        assert db.execute("SELECT count(*) FROM intake").fetchone() == (5,)  # none dropped

    survivor = Spool(path, "acct")
    assert survivor.adopt_orphans() == 1
    assert sorted(queued_ids(path)) == sorted(item.id for item in accepted)
    assert intake_files(path) == []
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM intakes").fetchone() == (0,)


def test_a_live_process_intake_is_never_adopted(tmp_path):
    path = tmp_path / "spool.sqlite3"
    owner, other = Spool(path, "acct"), Spool(path, "acct")
    owner.enqueue(submission(1))
    assert other.adopt_orphans() == 0
    assert len(intake_files(path)) == 1 and owner.outstanding() == 1


def test_request_threads_posting_together_share_commits(tmp_path):
    """Group commit: the first thread commits what the others queued meanwhile."""
    spool = Spool(tmp_path / "spool.sqlite3", "acct")
    spool.enqueue(submission(0))
    intake = spool._intake
    assert intake is not None
    commits: list[str] = []
    intake._writer.set_trace_callback(
        lambda statement: commits.append(statement) if statement == "COMMIT" else None)
    intake._write_guard.acquire()  # the disk is slow: the first commit waits
    threads = [threading.Thread(target=spool.enqueue, args=(submission(number),))
               for number in range(1, 9)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(intake._queue) == 7)  # one leads (blocked), seven queue up
    intake._write_guard.release()
    for thread in threads:
        thread.join(30)
    assert len(commits) == 2  # the leader's own, then the seven together
    assert spool.move_intake() == 9
    assert spool.outstanding() == 9


def test_spool_stats_and_forget_see_what_is_still_in_an_intake(tmp_path):
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, "acct")
    kept = submission(2)
    spool.enqueue(submission(1))
    spool.enqueue(kept)
    stats = SpoolAdmin(path).stats()
    assert (stats["pending"], stats["arriving"]) == (2, 2)
    assert stats["oldest_pending_age"] is not None
    assert SpoolAdmin(path).forget(email="p1@example.com") == {"queued": 1, "dead": 0}
    assert spool.move_intake() == 1
    assert queued_ids(path) == [kept.id]
    (file,) = intake_files(path)
    assert b"p1@example.com" not in file.read_bytes()


def test_a_forked_child_accepts_into_its_own_intake(tmp_path):
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, "acct")
    spool.enqueue(submission(1))
    parent_intake = intake_files(path)
    child = submission(2)
    pid = os.fork()
    if pid == 0:  # the child: its own intake, moved by itself
        try:
            spool.enqueue(child)
            code = 0 if spool.move_intake() == 1 else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert queued_ids(path) == [child.id]
    # The child's (exited) intake is adopted; the parent's stays the parent's.
    assert Spool(path, "acct").adopt_orphans() == 0
    assert intake_files(path) == parent_intake
    assert spool.move_intake() == 1


OLD_SCHEMA = """
CREATE TABLE submissions (id TEXT PRIMARY KEY, account TEXT NOT NULL, payload TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}', attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, due_at REAL NOT NULL, lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX submissions_due ON submissions (account, due_at);
CREATE TABLE dead_letters (id TEXT PRIMARY KEY, account TEXT NOT NULL, payload TEXT NOT NULL,
    progress TEXT NOT NULL, attempts INTEGER NOT NULL, created_at REAL NOT NULL,
    dead_at REAL NOT NULL, error TEXT NOT NULL);
CREATE TABLE workers (owner TEXT PRIMARY KEY, hostname TEXT NOT NULL, pid INTEGER NOT NULL,
    heartbeat_at REAL NOT NULL);
CREATE TABLE pauses (account TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE rate_log (account TEXT NOT NULL, endpoint TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE people (submission_id TEXT NOT NULL, person TEXT NOT NULL,
    accepted INTEGER NOT NULL, PRIMARY KEY (person, submission_id));
CREATE TABLE profile_marks (person TEXT NOT NULL, path TEXT NOT NULL,
    accepted INTEGER NOT NULL, PRIMARY KEY (person, path));
CREATE TABLE housekeeping (task TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE counters (account TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (account, name));
"""


def test_a_spool_file_of_the_previous_format_is_taken_over_with_nothing_lost(
        tmp_path, loopback_klaviyo):
    """A file written before intakes existed (the previous release's tables,
    a half-delivered submission among them) is delivered by this version."""
    fake = loopback_klaviyo.fake
    path = tmp_path / "old.sqlite3"
    account = account_fingerprint(loopback_klaviyo.url, API_KEY)
    half, dead = submission(2), submission(3)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(OLD_SCHEMA)
        for item, progress in ((submission(1), {}), (half, {"done": ["profile", "subscribe"]})):
            db.execute("INSERT INTO submissions (id, account, payload, progress, created_at, "
                       "due_at) VALUES (?, ?, ?, ?, 1, 1)",
                       (item.id, account, json.dumps(item.to_dict()), json.dumps(progress)))
        db.execute("INSERT INTO dead_letters VALUES (?, ?, ?, '{}', 3, ?, ?, ?)",
                   (dead.id, account, json.dumps(dead.to_dict()), time.time(), time.time(),
                    json.dumps({"message": "refused", "status": 400})))
        db.execute("INSERT INTO counters VALUES (?, 'delivered', 7)", (account,))
    middleware = KlaviyoMiddleware(lambda e, s: [], api_key=API_KEY, api_url=loopback_klaviyo.url,
                                   spool_path=str(path))
    try:
        assert middleware.flush(30)
    finally:
        middleware.close()
    assert sorted(event["unique_id"] for event in fake.klaviyo.state.events) == [
        "u-1", "u-2"]
    # The half-delivered one sends only what it had left: its event.
    profile_calls = [body for body in fake.bodies(r"/api/profile-import/?")
                     if "p2@example.com" in json.dumps(body)]
    assert profile_calls == []
    stats = SpoolAdmin(path).stats()
    assert (stats["pending"], stats["dead"], stats["delivered"]) == (0, 1, 9)


@pytest.mark.slow
def test_many_processes_accepting_and_delivering_one_killed_mid_commit(
        tmp_path, loopback_klaviyo):
    """Two processes post through the middleware and deliver, one only
    accepts (as fast as it can, so a SIGKILL lands mid-commit), one only
    delivers. Every submission a process said it accepted reaches Klaviyo,
    its event exactly once."""
    fake = loopback_klaviyo.fake
    fake.latency_range = (0.0, 0.02)
    path = tmp_path / "shared.sqlite3"
    url = loopback_klaviyo.url
    posters = [start("post", path, url, f"post{number}") for number in range(2)]
    accepting = start("accept", path, url, "accept")
    deliverer = start("deliver", path, url)
    accepted: list[str] = []
    try:
        wait_for(lambda: len(fake.klaviyo.state.events) >= 40, timeout=60)
        accepting.send_signal(signal.SIGKILL)
        accepting.wait()
        for process in posters:
            # Stopped as a server stops a worker: what it was sending finishes.
            process.send_signal(signal.SIGINT)
            process.wait()
        for process in (*posters, accepting):
            assert process.stdout is not None
            accepted += [line.strip() for line in process.stdout if line.strip()]
        wait_for(lambda: SpoolAdmin(path).stats()["pending"] == 0, timeout=120)
    finally:
        for process in (*posters, accepting, deliverer):
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()  # type: ignore[union-attr]
    assert any(name.startswith("accept-") for name in accepted)
    delivered = Counter(event["unique_id"] for event in fake.klaviyo.state.events)
    missing = set(accepted) - set(delivered)
    assert not missing, f"{len(missing)} accepted submissions never reached Klaviyo"
    # At most the one post each stop interrupted (committed, not yet
    # answered) may arrive without its "accepted" having been printed.
    unannounced = Counter(name.split("-")[0] for name in set(delivered) - set(accepted))
    assert max(unannounced.values(), default=0) <= 1
    sent = Counter(found for body in fake.bodies(r"/api/(events|event-bulk-create-jobs)/?")
                   for found in re.findall(r'"unique_id": "([^"]+)"', json.dumps(body)))
    twice = {unique: count for unique, count in sent.items() if count > 1}
    assert twice == {}


def test_an_intake_that_cannot_be_created_is_a_clear_503_not_a_500(tmp_path, klaviyo, caplog):
    path = tmp_path / "spool.sqlite3"
    middleware = KlaviyoMiddleware(lambda e, s: [], api_key=API_KEY, spool_path=str(path))
    try:
        assert intake_directory(path).is_dir()  # made at start-up
        intake_directory(path).rmdir()
        intake_directory(path).touch()  # something in the way: no directory can be made
        response = TestApp(middleware).post(
            "/klaviyoConnect/api/updateProfile", {"email": "someone@example.com"},
            headers={"Accept": "application/json"}, expect_errors=True)
        assert response.status_int == 503
        assert "could not spool" in caplog.text  # said where, not an unexpected error
        assert "try again" in response.json["errors"]["form"][0]
    finally:
        middleware.close()


def test_a_backlog_moves_in_batches(tmp_path, monkeypatch):
    """A sender held up while visitors kept coming: the intake's backlog goes
    into the shared file a batch per transaction, every row exactly once."""
    from klaviyo_middleware.delivery.spool import moves, store

    monkeypatch.setattr(moves, "MOVE_BATCH", 7)
    spool = store.Spool(tmp_path / "s.sqlite3", "acct")
    ids = []
    for number in range(30):
        submission = identify(f"b{number}@example.com")
        spool.enqueue(submission)
        ids.append(submission.id)
    commits = []
    real = spool.transaction

    def counted(*args, **kwargs):
        commits.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(spool, "transaction", counted)
    assert spool.move_intake() == 30
    assert len(commits) == 5  # 7 + 7 + 7 + 7 + 2
    claimed = spool.claim("w", 100, lease=60)
    assert sorted(item.submission.id for item in claimed) == sorted(ids)
    assert spool.move_intake() == 0
    spool.close()
