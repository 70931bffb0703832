"""docs/security.md, "Data we keep": personal data is erased when delivered, when
old, and on request, and a spool file deleted under a running process loses
nothing accepted after it."""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import pytest

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.cli import main
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.intake import intake_directory
from klaviyo_middleware.delivery.spool.store import Spool

from support.factories import identify
from support.klaviyo_fake import API_KEY

ACCOUNT = account_fingerprint("https://klaviyo.test", API_KEY)
DAY = 86400.0


def on_disk(path: Path) -> bytes:
    """Every byte the spool keeps: the database, its write-ahead log and index."""
    return b"".join(
        Path(f"{path}{suffix}").read_bytes()
        for suffix in ("", "-wal", "-shm") if Path(f"{path}{suffix}").exists())


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(args), out=out), out.getvalue()


class TestDeliveredDataIsGone:
    def test_no_trace_in_the_file_or_its_log(self, tmp_path):
        spool = Spool(tmp_path / "s.sqlite3", ACCOUNT)
        for number in range(30):
            spool.enqueue(identify(f"trace-{number}-zq@example.com"))
        spool.complete_many("w", spool.claim("w", 30, lease=60))
        assert spool.outstanding() == 0
        assert spool.truncate_wal()
        assert b"-zq@example.com" not in on_disk(spool.path)
        spool.close()


class TestDeadLettersExpire:
    def bury(self, spool: Spool, email: str, at: float) -> None:
        spool.enqueue(identify(email), now=at)
        [claimed] = spool.claim("w", 1, lease=60, now=at)
        spool.bury("w", claimed, {"status": 400}, now=at)

    def test_older_than_the_age_are_purged_and_logged(self, tmp_path, caplog):
        spool = Spool(tmp_path / "s.sqlite3", ACCOUNT)
        now = 100 * DAY
        self.bury(spool, "old-zq@example.com", now - 31 * DAY)
        self.bury(spool, "recent@example.com", now - 29 * DAY)
        with caplog.at_level(logging.INFO, logger="klaviyo_middleware"):
            assert spool.expire_dead_letters(30 * DAY, now) == 1
        assert [letter.email for letter in spool.dead_letters()] == ["recent@example.com"]
        assert "purged 1 dead letters older than 30 days" in caplog.text
        spool.truncate_wal()
        assert b"old-zq@example.com" not in on_disk(spool.path)
        spool.close()

    def test_the_running_sender_expires_them(self, tmp_path, klaviyo):
        path = tmp_path / "s.sqlite3"
        spool = Spool(path, account_fingerprint(klaviyo.api_url, API_KEY))
        self.bury(spool, "old-zq@example.com", 1000.0)
        spool.close()
        middleware = KlaviyoMiddleware(lambda e, s: [], api_key=API_KEY,
                                       api_url=klaviyo.api_url, spool_path=str(path),
                                       dead_letter_max_age=7 * DAY)
        try:
            assert middleware.settings.sender.dead_letter_max_age == 7 * DAY
            middleware.delivery.submit(identify("new@example.com"))
            assert middleware.flush(10)
            assert middleware.delivery.spool.dead_letters() == []  # type: ignore[attr-defined]
        finally:
            middleware.close()


class TestForget:
    @pytest.fixture
    def path(self, tmp_path) -> Path:
        spool = Spool(tmp_path / "s.sqlite3", ACCOUNT)
        spool.enqueue(identify("Jane.Roe@Example.com"))
        spool.enqueue(identify("jane.roe@example.com", "+14155552671"))
        spool.enqueue(identify(phone="+14155552671"))
        spool.enqueue(identify("someone.else@example.com"))
        spool.enqueue(identify("jane.roe@example.com"), now=1.0)
        [claimed] = spool.claim("w", 1, lease=60, now=1.0)
        spool.bury("w", claimed, {"status": 400, "detail": "refused"}, now=2.0)
        spool.close()
        return spool.path

    def test_by_email_in_any_case(self, path):
        code, text = run("spool", "forget", "JANE.ROE@example.com", "--spool", str(path))
        assert code == 0
        assert "erased 2 queued submission(s) and 1 dead letter(s)" in text
        assert "jane.roe" not in text.lower()  # the report masks the person too
        spool = Spool(path, ACCOUNT)
        assert spool.outstanding() == 2 and spool.dead_letters() == []
        assert b"jane.roe@" not in on_disk(path).lower()
        assert b"someone.else@example.com" in on_disk(path)
        spool.close()

    def test_by_phone_number_written_any_way(self, path):
        code, text = run("spool", "forget", "+1 (415) 555-2671", "--spool", str(path))
        assert code == 0 and "erased 2 queued submission(s) and 0 dead letter(s)" in text
        assert b"+14155552671" not in on_disk(path)

    @pytest.mark.parametrize("who", ["not an address", "555-2671", "@"])
    def test_an_unusable_identifier_is_refused(self, path, who, capsys):
        code, _ = run("spool", "forget", who, "--spool", str(path))
        assert code == 2
        assert "klaviyo-middleware:" in capsys.readouterr().err
        spool = Spool(path, ACCOUNT)
        assert spool.outstanding() == 4
        spool.close()


class TestSpoolFileDeletedUnderUs:
    def test_an_intake_deleted_in_use_loses_nothing(self, tmp_path, caplog):
        path = tmp_path / "s.sqlite3"
        spool = Spool(path, ACCOUNT)
        spool.enqueue(identify("before@example.com"))
        shutil.rmtree(intake_directory(path))  # "rm -rf spool.sqlite3*"
        with caplog.at_level(logging.WARNING, logger="klaviyo_middleware"):
            spool.enqueue(identify("after@example.com"))
        assert "intake" in caplog.text
        spool.close_all()
        restarted = Spool(path, ACCOUNT)
        restarted.adopt_orphans()
        assert restarted.outstanding() == 2
        restarted.close()

    def test_posts_after_the_delete_survive_a_restart(self, tmp_path, caplog):
        path = tmp_path / "s.sqlite3"
        spool = Spool(path, ACCOUNT)
        for number in range(2):
            spool.enqueue(identify(f"before{number}@example.com"))
        spool.move_intake()
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                os.remove(f"{path}{suffix}")
        with caplog.at_level(logging.WARNING, logger="klaviyo_middleware"):
            for number in range(3):
                spool.enqueue(identify(f"after{number}@example.com"))
            spool.move_intake()
        assert "deleted or replaced" in caplog.text
        spool.close_all()
        restarted = Spool(path, ACCOUNT)
        # The three accepted after the delete, and the two the old file still
        # held, carried over.
        assert restarted.outstanding() == 5
        restarted.close()

    def test_two_processes_carrying_one_replaced_file_send_no_step_twice(self, tmp_path):
        """Each process carries the old file when it notices. The one that
        notices late must not bring back what was delivered since, nor lose
        a step it sent meanwhile (three removals under two processes used to
        subscribe 43 people twice)."""
        path = tmp_path / "s.sqlite3"
        first, second = Spool(path, ACCOUNT), Spool(path, ACCOUNT)
        for number in range(3):
            first.enqueue(identify(f"p{number}@example.com"))
        first.move_intake()
        # The second process holds one of them, mid-delivery, on the old file.
        [held] = second.claim("second", 1, lease=60)
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                os.remove(f"{path}{suffix}")
        # The first notices, carries the old file over, and delivers the rest.
        rest = first.claim("first", 10, lease=60)
        assert len(rest) == 2  # the held one keeps the second's lease
        first.complete_many("first", rest)
        # The second notices late: its step done meanwhile is kept; what
        # the first delivered does not come back.
        held.progress.done.append("profile")
        assert second.save_progress_many("second", [held], 60) == {held.submission.id}
        assert second.outstanding() == 1
        with second.reading() as db:
            [(progress,)] = db.execute("SELECT progress FROM submissions").fetchall()
        assert "profile" in progress
        for spool in (first, second):
            spool.close_all()

    def test_a_file_swapped_in_keeps_its_rows_and_gains_ours(self, tmp_path):
        path = tmp_path / "s.sqlite3"
        spool = Spool(path, ACCOUNT)
        spool.enqueue(identify("ours@example.com"))
        spool.move_intake()
        other = Spool(tmp_path / "other.sqlite3", ACCOUNT)
        other.enqueue(identify("theirs@example.com"))
        other.close_all()
        os.replace(tmp_path / "other.sqlite3", path)
        spool.enqueue(identify("later@example.com"))
        spool.close_all()
        restarted = Spool(path, ACCOUNT)
        assert restarted.outstanding() == 3
        restarted.close()
