"""The SQLite spool: leases, progress, dead letters, pause, rate limits, size."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.intake import SpoolFull
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.klaviyo.limits import ENDPOINT_LIMITS, ENDPOINT_OPERATIONS, scaled
from klaviyo_middleware.model.submission import Submission

from support.factories import submission
from support.klaviyo_models import rate_limit

ACCOUNT = account_fingerprint("https://klaviyo.test", "pk_test")


@pytest.fixture
def spool(tmp_path) -> Spool:
    return Spool(tmp_path / "spool.sqlite3", ACCOUNT)


def other_process_view(spool: Spool, account: str = ACCOUNT) -> Spool:
    """A second Spool on the same file: what another process sees."""
    return Spool(spool.path, account)


def test_round_trip_keeps_the_submission_exactly(spool):
    original = submission()
    original.profile["properties"] = {"nested": {"list": [1, 2.5, None, True]}}
    spool.enqueue(original, now=100.0)
    [claimed] = spool.claim("worker-a", limit=10, lease=60, now=100.0)
    assert claimed.submission == original
    assert claimed.attempts == 0 and claimed.progress.done == []


def test_a_lease_is_exclusive_until_it_expires(spool):
    spool.enqueue(submission(), now=100.0)
    other = other_process_view(spool)
    assert len(spool.claim("a", 10, lease=60, now=100.0)) == 1
    assert other.claim("b", 10, lease=60, now=159.0) == []
    [taken_over] = other.claim("b", 10, lease=60, now=160.5)
    # The first owner's lease is gone: it can neither save nor complete.
    assert spool.save_progress("a", taken_over, lease=60, now=161.0) is False
    spool.complete("a", taken_over)
    assert spool.outstanding() == 1
    other.complete("b", taken_over)
    assert spool.outstanding() == 0


def test_progress_survives_a_takeover(spool):
    spool.enqueue(submission(), now=0.0)
    [claimed] = spool.claim("a", 1, lease=10, now=0.0)
    claimed.progress.done.append("profile")
    claimed.progress.profile_id = "01ABC"
    assert spool.save_progress("a", claimed, lease=10, now=1.0)
    [again] = other_process_view(spool).claim("b", 1, lease=10, now=12.0)
    assert again.progress.done == ["profile"] and again.progress.profile_id == "01ABC"


def test_claim_order_and_limit(spool):
    for number in range(5):
        spool.enqueue(submission(number), now=float(number))
    claimed = spool.claim("a", limit=3, lease=60, now=10.0)
    assert [item.submission.profile["email"] for item in claimed] == [
        "p0@example.com", "p1@example.com", "p2@example.com"]


def test_reschedule_waits_until_due(spool):
    spool.enqueue(submission(), now=0.0)
    [claimed] = spool.claim("a", 1, lease=60, now=0.0)
    spool.reschedule("a", claimed, due_at=30.0, error={"status": 503})
    assert spool.claim("a", 1, lease=60, now=29.0) == []
    [again] = spool.claim("a", 1, lease=60, now=30.0)
    assert again.attempts == 1


def test_bury_keeps_klaviyo_error(spool):
    spool.enqueue(submission(), now=0.0)
    [claimed] = spool.claim("a", 1, lease=60, now=0.0)
    spool.bury("a", claimed, {"status": 400, "detail": "Invalid email"}, now=5.0)
    assert spool.outstanding() == 0
    [dead] = spool.dead_letters()
    assert dead.error == {"status": 400, "detail": "Invalid email"}
    assert dead.submission.id == claimed.submission.id and dead.attempts == 1


def test_accounts_never_see_each_others_submissions(spool):
    spool.enqueue(submission(), now=0.0)
    stranger = other_process_view(spool, account=account_fingerprint("https://x", "pk_other"))
    assert stranger.claim("s", 10, lease=60, now=1.0) == []
    assert stranger.outstanding() == 0


def test_dead_owners_are_released_at_once(spool):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    dead_owner = f"host:{process.pid}:x"
    spool.enqueue(submission(), now=0.0)
    spool.claim(dead_owner, 1, lease=3600, now=0.0)
    with spool.reading() as db:
        db.execute("INSERT INTO senders (owner, hostname, pid, heartbeat_at) VALUES (?, ?, ?, 0)",
                   (dead_owner, socket.gethostname(), process.pid))
    assert spool.release_dead_owners() == 1
    assert len(spool.claim("alive", 1, lease=60)) == 1


def test_live_owners_keep_their_leases(spool):
    import os
    owner = f"host:{os.getpid()}:x"
    spool.register_sender(owner)
    spool.enqueue(submission())
    spool.claim(owner, 1, lease=3600)
    assert spool.release_dead_owners() == 0


def test_pause_is_shared_and_only_extends(spool):
    other = other_process_view(spool)
    spool.pause(400.0, now=100.0)
    assert other.paused_for(now=100.0) == 400.0
    other.pause(200.0, now=100.0)
    assert spool.paused_for(now=100.0) == 400.0
    assert spool.paused_for(now=600.0) == 0.0


class TestRateSlots:
    limits = ((1.0, 3), (60.0, 5))

    def test_burst_limit_is_a_sliding_window(self, spool):
        assert [spool.take_rate_slot("e", self.limits, now=10.0 + i / 10) for i in range(3)] \
            == [0.0, 0.0, 0.0]
        wait = spool.take_rate_slot("e", self.limits, now=10.5)
        assert wait == pytest.approx(0.5)
        assert spool.take_rate_slot("e", self.limits, now=11.01) == 0.0

    def test_steady_limit(self, spool):
        for second in range(5):
            assert spool.take_rate_slot("e", self.limits, now=100.0 + second) == 0.0
        assert spool.take_rate_slot("e", self.limits, now=110.0) == pytest.approx(50.0)

    def test_limits_are_shared_between_processes_and_endpoints_are_separate(self, spool):
        other = other_process_view(spool)
        for _ in range(3):
            assert spool.take_rate_slot("e", self.limits, now=1.0) == 0.0
        assert other.take_rate_slot("e", self.limits, now=1.5) > 0
        assert other.take_rate_slot("other-endpoint", self.limits, now=1.5) == 0.0


def test_limits_match_klaviyos_spec():
    for endpoint, (method, path) in ENDPOINT_OPERATIONS.items():
        burst, steady = rate_limit(method, path.replace("{id}", "X"))
        assert ENDPOINT_LIMITS[endpoint] == ((1.0, burst), (60.0, steady)), endpoint


def test_scaled_limits_never_reach_zero():
    assert scaled(((1.0, 10), (60.0, 150)), 0.9) == ((1.0, 9), (60.0, 135))
    assert scaled(((1.0, 1),), 0.5) == ((1.0, 1),)


def test_full_spool_refuses_new_submissions(tmp_path):
    small = Spool(tmp_path / "small.sqlite3", ACCOUNT, max_bytes=128 * 1024)
    accepted = 0
    with pytest.raises(SpoolFull):
        for number in range(10_000):
            small.enqueue(submission(number))
            accepted += 1
    assert 0 < accepted < 10_000
    assert small.outstanding() == accepted


def test_spool_file_is_private(tmp_path):
    Spool(tmp_path / "private.sqlite3", ACCOUNT)
    assert (tmp_path / "private.sqlite3").stat().st_mode & 0o077 == 0


def test_housekeeping_turns_go_to_one_process_at_a_time(tmp_path):
    """The WAL checkpoint holds every process's writes back: one process on
    the spool does it, at most once per interval."""
    first = Spool(tmp_path / "shared.sqlite3", ACCOUNT)
    second = Spool(tmp_path / "shared.sqlite3", ACCOUNT)
    assert first.take_turn("truncate_wal", 60.0, now=1000.0)
    assert not second.take_turn("truncate_wal", 60.0, now=1030.0)
    assert not first.take_turn("truncate_wal", 60.0, now=1059.0)
    assert second.take_turn("truncate_wal", 60.0, now=1061.0)
    assert second.take_turn("prune", 60.0, now=1061.0), "each task has its own turn"


class TestPrivateFiles:
    """Spool, WAL, SHM and intake files hold addresses: owner-only, always."""

    def test_an_existing_world_readable_spool_is_made_private(self, tmp_path, caplog):
        import os
        import stat

        path = tmp_path / "spool.sqlite3"
        Spool(path, ACCOUNT).close()
        for name in ("spool.sqlite3", "spool.sqlite3-wal", "spool.sqlite3-shm"):
            target = tmp_path / name
            target.touch()
            os.chmod(target, 0o644)
        spool = Spool(path, ACCOUNT)
        try:
            spool.enqueue(submission())
            files = [p for p in tmp_path.rglob("*") if p.is_file()]
            assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), \
                {p.name: oct(p.stat().st_mode) for p in files}
            assert "readable by other users" in caplog.text
        finally:
            spool.close()

    def test_one_clear_line_when_it_cannot_be_changed(self, tmp_path, monkeypatch):
        import os

        from klaviyo_middleware import ConfigurationError

        path = tmp_path / "spool.sqlite3"
        path.touch()
        os.chmod(path, 0o644)

        def refused(*args: object, **kwargs: object) -> None:
            raise PermissionError("not the owner")

        monkeypatch.setattr(os, "chmod", refused)
        with pytest.raises(ConfigurationError, match=r"readable by other users.*chmod 600"):
            Spool(path, ACCOUNT)


class TestFilesOfAnEarlierVersion:
    """What an earlier version wrote is read under today's names."""

    def test_a_submission_stored_with_its_acceptance_stamp_as_accepted(self):
        stored = submission().to_dict()
        stored["accepted"] = stored.pop("accepted_at")
        assert Submission.from_dict(stored).accepted_at == stored["accepted"]

    def test_a_submission_stored_before_acceptance_stamps_is_oldest(self):
        stored = submission().to_dict()
        del stored["accepted_at"]
        assert Submission.from_dict(stored).accepted_at == 0

    def test_a_spool_file_with_the_old_column_names_is_brought_up_to_date(self, tmp_path):
        import sqlite3

        from klaviyo_middleware.delivery.spool.schema import RENAMED_COLUMNS, SCHEMA

        path = tmp_path / "old.sqlite3"
        old_schema = SCHEMA
        for _table, old, new in RENAMED_COLUMNS:
            old_schema = old_schema.replace(f"{new} INTEGER", f"{old} INTEGER")
        with sqlite3.connect(path) as db:
            db.executescript(old_schema)
            db.execute("INSERT INTO profile_marks VALUES ('someone', 'first_name', 7)")
        db.close()
        spool = Spool(path, ACCOUNT)
        spool.enqueue(submission(), now=100.0)
        [claimed] = spool.claim("sender-a", limit=10, lease=60, now=100.0)
        with sqlite3.connect(path) as db:
            for table, old, new in RENAMED_COLUMNS:
                columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                assert new in columns and old not in columns
            assert db.execute("SELECT accepted_at FROM profile_marks").fetchall() == [(7,)]
            assert db.execute("SELECT accepted_at FROM people").fetchone() == (
                claimed.submission.accepted_at,)
        db.close()
        # The old mark, of nobody waiting, is pruned by the renamed columns' SQL.
        assert spool.prune_marks(now=1e6) == 1

    def test_a_spool_file_without_the_added_columns_gets_them(self, tmp_path):
        import sqlite3

        from klaviyo_middleware.delivery.spool.schema import ADDED_COLUMNS, SCHEMA

        path = tmp_path / "old.sqlite3"
        old_schema = SCHEMA
        for _table, column, declaration in ADDED_COLUMNS:
            old_schema = old_schema.replace(f",\n    {column} {declaration}", "")
        assert old_schema != SCHEMA
        with sqlite3.connect(path) as db:
            db.executescript(old_schema)
        db.close()
        spool = Spool(path, ACCOUNT)
        spool.register_sender("sender-a")
        with spool.reading() as db:
            assert db.execute("SELECT account FROM senders").fetchall() == [(ACCOUNT,)]
