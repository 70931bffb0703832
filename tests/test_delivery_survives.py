"""No single bad row, call or exception stops delivery or takes other submissions with it."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading
import time
from typing import Any

import pytest
import requests

from klaviyo_middleware import ConfigurationError, KlaviyoMiddleware
from klaviyo_middleware.cli import main
from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.admin import SpoolAdmin
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.delivery.sync import SyncDelivery
from klaviyo_middleware.klaviyo.client import MAX_RETRY_AFTER, KlaviyoClient
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.submission import Submission

from support.factories import spool_delivery, submission
from support.klaviyo_fake import API_KEY, API_URL
from support.waiting import wait_for

ACCOUNT = account_fingerprint(API_URL, API_KEY)
UPDATE = "/klaviyoConnect/api/updateProfile"
JSON = {"Accept": "application/json"}


def raw_row(spool: Spool, submission_id: str, payload: str) -> None:
    """A row as another version (or a damaged file) might have left it."""
    with spool.transaction() as db:
        db.execute("INSERT INTO submissions (id, account, payload, created_at, due_at) "
                   "VALUES (?, ?, ?, ?, ?)", (submission_id, ACCOUNT, payload, 0.0, 0.0))


class TestTheLoop:
    def test_an_error_while_idle_does_not_end_delivery(self, tmp_path, klaviyo, monkeypatch):
        delivery = spool_delivery(tmp_path, batch=5)
        try:
            real = Spool.next_due
            failures = []

            def locked(self: Spool) -> float | None:
                if len(failures) < 3:
                    failures.append(1)
                    raise sqlite3.OperationalError("database is locked")
                return real(self)

            monkeypatch.setattr(Spool, "next_due", locked)
            wait_for(lambda: len(failures) == 3, timeout=10)
            delivery.submit(submission(1))
            assert delivery.flush(20)
            assert len(klaviyo.events) == 1
            assert all(thread.is_alive() for thread in delivery.sender._threads)
        finally:
            delivery.close()

    def test_a_thread_that_died_is_restarted(self, tmp_path, klaviyo, monkeypatch, caplog):
        delivery = spool_delivery(tmp_path, sender_threads=1)
        try:
            class Fatal(BaseException):
                pass

            def die(*args: Any, **kwargs: Any) -> Any:
                raise Fatal

            # Something no `except Exception` catches ends the only thread.
            monkeypatch.setattr(delivery.sender, "_tick", die)
            monkeypatch.setattr(threading, "excepthook", lambda args: None)
            wait_for(lambda: not delivery.sender._threads[0].is_alive(), timeout=10)
            monkeypatch.undo()
            with caplog.at_level(logging.ERROR):
                delivery.submit(submission(2))
            assert "restarting it" in caplog.text
            assert delivery.flush(20)
            assert len(klaviyo.events) == 1
        finally:
            delivery.close()


class TestOneBadSubmission:
    def test_an_unreadable_row_goes_alone_to_the_dead_letters(self, tmp_path, klaviyo):
        spool = Spool(tmp_path / "spool.sqlite3", ACCOUNT)
        for number in range(19):
            spool.enqueue(submission(number))
        raw_row(spool, "from-another-version", '{"action": "identify", "shape": "new"}')
        delivery = spool_delivery(spool, batch=20)
        try:
            assert delivery.flush(30)
        finally:
            delivery.close()
        assert len(klaviyo.events) == 19
        (letter,) = spool.dead_letters()
        assert letter.id == "from-another-version" and letter.submission is None
        assert letter.error["code"] == "unreadable"
        out = io.StringIO()
        assert main(["spool", "dead", "--spool", str(spool.path)], out=out) == 0
        assert "from-another-version" in out.getvalue() and "unreadable" in out.getvalue()

    def test_a_value_json_cannot_hold_never_takes_its_batch_mates(self, tmp_path, klaviyo):
        spool = Spool(tmp_path / "spool.sqlite3", ACCOUNT)
        for number in range(24):
            spool.enqueue(submission(number, properties={"n": number}))
        # Written by a version that let NaN through: readable, not sendable.
        bad = submission(99).to_dict()
        bad["profile"]["properties"] = {"n": float("nan")}
        raw_row(spool, bad["id"], json.dumps(bad))
        delivery = spool_delivery(spool, batch=5)
        try:
            assert delivery.flush(30)
        finally:
            delivery.close()
        # The backlog went through the bulk endpoints, and only the bad one died.
        assert klaviyo.bodies("/api/profile-bulk-import-jobs")
        assert len(klaviyo.events) == 24
        (letter,) = spool.dead_letters()
        assert letter.id == bad["id"] and letter.error["code"] == "unserialisable"

    def test_a_hook_that_adds_nan_gets_a_clear_400(self, make_app, klaviyo):
        def hook(submission: Submission, request: Any) -> None:
            submission.profile["properties"] = {"score": float("nan")}

        for delivery in ("sync", "spool"):
            app = make_app(before_send=hook, delivery=delivery)
            answer = app.post(UPDATE, {"email": "a@example.com"}, headers=JSON, status=400)
            assert answer.json["success"] is False
        assert klaviyo.calls == []


class TestPauses:
    def test_retry_after_is_capped_and_spool_resume_lifts_the_pause(self, tmp_path, klaviyo):
        klaviyo.fail("/api/profile-import", 429, headers={"Retry-After": "1e12"})
        spool = Spool(tmp_path / "spool.sqlite3", ACCOUNT)
        delivery = spool_delivery(spool, batch=5)
        try:
            delivery.submit(submission(1))

            def put_off_by_the_429() -> bool:
                with spool.reading() as db:
                    return db.execute(
                        "SELECT COUNT(*) FROM submissions WHERE lease_owner IS NULL AND "
                        "json_extract(last_error, '$.status') = 429").fetchone()[0] == 1

            # The pause, and the submission handed back behind it: what
            # `spool resume` is for.
            wait_for(lambda: spool.paused_for() > 0 and put_off_by_the_429(), timeout=10)
            assert spool.paused_for() <= MAX_RETRY_AFTER
            out = io.StringIO()
            assert main(["spool", "resume", "--spool", str(spool.path)], out=out) == 0
            assert "lifted a pause" in out.getvalue()
            assert delivery.flush(20)
            assert len(klaviyo.events) == 1
            out = io.StringIO()
            main(["spool", "resume", "--spool", str(spool.path)], out=out)
            assert "not paused" in out.getvalue()
        finally:
            delivery.close()


class _SilentSession:
    """A Klaviyo that never answers: every call takes its whole read timeout."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.timeouts: list[tuple[float, float]] = []

    def request(self, method: str, url: str, timeout: tuple[float, float], **_: Any) -> Any:
        self.timeouts.append(timeout)
        self.clock[0] += timeout[1]
        raise requests.ReadTimeout("no answer")


class TestSyncDeadline:
    def test_a_silent_klaviyo_costs_at_most_the_budget_and_one_read_timeout(self, monkeypatch):
        clock = [1000.0]
        monkeypatch.setattr("klaviyo_middleware.klaviyo.client.time.monotonic", lambda: clock[0])
        client = KlaviyoClient(API_KEY, api_url=API_URL, timeout=(5.0, 15.0))
        session = _SilentSession(clock)
        client._local.session = session
        delivery = SyncDelivery(client, Hooks(), RetryPolicy(budget=5.0, max_attempts=10),
                                sleep=lambda seconds: clock.__setitem__(0, clock[0] + seconds),
                                clock=lambda: clock[0])
        item = submission(1)
        outcome = delivery.submit(item)
        assert not outcome.accepted and outcome.error is not None and outcome.error.transient
        assert clock[0] - 1000.0 <= delivery.deadline == 20.0
        assert len(session.timeouts) >= 1


class TestStartUp:
    def test_a_read_only_spool_is_a_configuration_error(self, tmp_path, monkeypatch):
        # Root ignores file modes, so the first write fails the way SQLite
        # fails on a read-only file.
        def read_only(*args: Any, **kwargs: Any) -> None:
            raise sqlite3.OperationalError("attempt to write a readonly database")

        monkeypatch.setattr(Spool, "register_sender", read_only)
        with pytest.raises(ConfigurationError, match="writable"):
            KlaviyoMiddleware(lambda e, s: [], api_key=API_KEY, api_url=API_URL,
                              spool_path=str(tmp_path / "spool.sqlite3"))


class TestRedaction:
    def test_tracebacks_are_redacted(self, make_app, klaviyo, caplog):
        def hook(submission: Submission, request: Any) -> None:
            raise KeyError(submission.profile["email"])

        app = make_app(before_send=hook)
        with caplog.at_level(logging.DEBUG):
            app.post(UPDATE, {"email": "josé.alvarez@example.com", "phone_number":
                              "+44 20 7946 0958"})
        handler = logging.StreamHandler(io.StringIO())
        text = "\n".join(handler.format(record) for record in caplog.records)
        assert "KeyError" in text and "before_send hook" in text
        assert "josé.alvarez" not in text and "j***@example.com" in text

    def test_unicode_addresses_in_dead_letters_are_masked(self, tmp_path, klaviyo):
        klaviyo.fail("/api/profile-import", 400,
                     body={"errors": [{"code": "invalid", "title": "Bad: josé@example.com",
                                       "detail": "josé@example.com is not valid"}]})
        spool = Spool(tmp_path / "spool.sqlite3", ACCOUNT)
        delivery = spool_delivery(spool, batch=5)
        try:
            delivery.submit(submission(1, profile={"email": "josé@example.com"}))
            assert delivery.flush(20)
        finally:
            delivery.close()
        (letter,) = spool.dead_letters()
        assert "josé" not in letter.error["message"]
        out = io.StringIO()
        main(["spool", "dead", "--spool", str(spool.path)], out=out)
        assert "josé" not in out.getvalue() and "j***@example.com" in out.getvalue()
        assert SpoolAdmin(spool.path).dead_letters()[0].email == "josé@example.com"


class TestTheSuiteWideWatch:
    """tests/personal_data.py checks every test's logs; it must be able to fail."""

    def test_it_sees_what_redaction_missed(self):
        from support.personal_data import Watch

        watch = Watch()
        for text, leaked in [("for josé@example.com", True), ("call +447946000123", True),
                             ("key pk_live_abc", True), ("for j***@example.com", False),
                             ("submission 3f2a9c19527b98 at 2026-11-28T18:22:15", False)]:
            watch.emit(logging.LogRecord("klaviyo_middleware", logging.INFO, __file__, 1,
                                         text, None, None))
            assert bool(watch.take()) is leaked, text


def test_spool_resume_brings_forward_what_an_outage_put_off(tmp_path):
    """By hand, what the senders do when Klaviyo answers again."""
    spool = Spool(tmp_path / "spool.sqlite3", ACCOUNT)
    spool.enqueue(submission(1))
    spool.move_intake()
    [leased] = spool.claim("me", 1, 60)
    spool.reschedule("me", leased, time.time() + 3600,
                     {"message": "down", "status": None, "code": None, "detail": None,
                      "pointer": None})
    try:
        assert spool.claim("me", 1, 60) == []
        out = io.StringIO()
        assert main(["spool", "resume", "--spool", str(spool.path)], out=out) == 0
        assert [item.submission.id for item in spool.claim("me", 1, 60)] == [leased.submission.id]
    finally:
        spool.close()
