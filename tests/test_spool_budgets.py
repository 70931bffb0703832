"""Junk that Klaviyo refuses, and a full disk, never turn real visitors away
or stop delivery.

- Dead letters have a budget of their own (``dead_letter_max_size``): past
  it the oldest go, said in the log and in ``spool stats``; they never
  count against the room for new submissions (``spool_max_size``).
- New submissions are refused (503) while the spool's filesystem still has
  room for delivery's own writes, so what was accepted goes out when
  Klaviyo is back — on a real, small filesystem.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from klaviyo_middleware.delivery.spool.admin import SpoolAdmin

UPDATE = "/klaviyoConnect/api/updateProfile"
JSON = {"Accept": "application/json"}


def padded(number: int, kilobytes: int = 40) -> dict[str, str]:
    """A form with ``kilobytes`` of custom properties: the junk of the attack."""
    return {"email": f"person{number}@example.com", "list": "L1",
            **{f"extra[k{index}]": "x" * 1000 for index in range(kilobytes)}}


def test_dead_letters_never_refuse_a_real_visitor(make_app, klaviyo, caplog):
    # Klaviyo refuses every profile, alone or in bulk (a refused bulk job is
    # replayed one by one): each junk post becomes a dead letter.
    klaviyo.fail("/api/profile-(import|bulk-import-jobs)", 400, times=10_000)
    app = make_app(delivery="spool", spool_max_size=2_000_000, dead_letter_max_size=300_000)
    middleware = make_app.middleware
    for round_ in range(8):
        for number in range(10):
            app.post(UPDATE, padded(round_ * 10 + number), headers=JSON, status=200)
        assert middleware.flush(30)
    # 80 posts of 40 KB each, 3.2 MB refused: far past both budgets.
    stats = SpoolAdmin(middleware.delivery.spool.path).stats()
    assert stats["pending"] == 0
    assert 0 < stats["dead_bytes"] <= 300_000
    assert stats["dead_evicted"] >= 60
    assert stats["dead"] + stats["dead_evicted"] == 80
    assert "dead_letter_max_size" in caplog.text
    # A real visitor is taken, and delivered once Klaviyo takes profiles.
    klaviyo._script.clear()
    answer = app.post(UPDATE, {"email": "real@example.com", "list": "L1"}, headers=JSON)
    assert answer.json["success"] is True
    assert middleware.flush(30)
    assert klaviyo.bodies("/api/profile-import")[-1]["data"]["attributes"]["email"] == \
        "real@example.com"


def test_the_oldest_dead_letters_go_first(tmp_path):
    from klaviyo_middleware.delivery.spool.store import Spool
    from klaviyo_middleware.model.submission import Submission

    spool = Spool(tmp_path / "spool.sqlite3", "acct", dead_max_bytes=20_000)
    try:
        for number in range(10):
            submission = Submission(action="updateProfile",
                                    profile={"email": f"p{number}@example.com",
                                             "properties": {"pad": "x" * 3000}})
            spool.enqueue(submission, now=1000.0 + number)
        spool.move_intake()
        for leased in spool.claim("me", 100, 60, now=2000.0):
            spool.bury("me", leased, {"status": 400, "detail": "refused"},
                       now=2000.0 + int(leased.submission.profile["email"][1]))
        kept = sorted(dead.submission.profile["email"] for dead in spool.dead_letters()
                      if dead.submission is not None)
        stats = SpoolAdmin(spool.path).stats()
        assert stats["dead_bytes"] <= 20_000
        # The newest survive, the oldest were deleted.
        assert kept == [f"p{number}@example.com" for number in range(10 - len(kept), 10)]
        assert stats["dead_evicted"] == 10 - len(kept) > 0
    finally:
        spool.close()


def test_a_spool_from_before_the_budget_counts_its_dead_letters(tmp_path):
    import sqlite3

    from klaviyo_middleware.delivery.spool.store import Spool

    path = tmp_path / "spool.sqlite3"
    Spool(path, "acct").close()
    db = sqlite3.connect(path)
    with db:
        # As the previous version left it: dead letters, no totals.
        db.execute("INSERT INTO dead_letters VALUES ('x', 'acct', ?, '{}', 1, 0, 0, '{}')",
                   ('{"pad":"' + "y" * 5000 + '"}',))
        db.execute("DROP TABLE totals")
        db.execute("DROP TRIGGER dead_letter_added")
    db.close()
    Spool(path, "acct").close()
    assert SpoolAdmin(path).stats()["dead_bytes"] == len('{"pad":"' + "y" * 5000 + '"}') + 4


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A real 32 MB filesystem (tmpfs, as root) for the spool."""
    mount_point = Path(f"/tmp/klaviyo-small-disk-{uuid.uuid4().hex[:8]}")
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs",  # noqa: S607
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        mount_point.rmdir()
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a small tmpfs for the full-disk test: {mounted.stderr}")
        pytest.skip("a small filesystem needs root (mount -t tmpfs)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)  # noqa: S607
        shutil.rmtree(mount_point, ignore_errors=True)


def test_a_full_disk_refuses_new_posts_and_still_delivers(make_app, klaviyo, small_disk):
    """Klaviyo away while posts pour in: the spool refuses new ones (503)
    before the disk is full, and everything it accepted goes out once
    Klaviyo is back (it once stalled on "database or disk is full")."""
    from requests.exceptions import ConnectionError as RequestsConnectionError

    klaviyo.fail("/api/.*", exception=RequestsConnectionError("down"), times=1_000_000)
    app = make_app(delivery="spool", spool_path=str(small_disk / "spool.sqlite3"))
    middleware = make_app.middleware
    accepted: list[str] = []
    refused = 0
    for number in range(5_000):
        answer = app.post(UPDATE, {**padded(number, 10), "event[name]": "Joined"}, headers=JSON,
                          expect_errors=True)
        if answer.status_int == 503:
            refused += 1
            assert answer.headers["Retry-After"]
            if refused >= 5:
                break
        else:
            assert answer.status_int == 200, answer.text
            accepted.append(f"person{number}@example.com")
    assert refused >= 5, "the disk never filled"
    assert len(accepted) > 50
    free = shutil.disk_usage(small_disk).free
    assert free > 1024 * 1024, free  # room was kept for delivery
    # Klaviyo is back: what was accepted goes out, no write refused on the way.
    klaviyo._script.clear()
    SpoolAdmin(middleware.delivery.spool.path).resume()
    assert middleware.flush(60), SpoolAdmin(middleware.delivery.spool.path).stats()
    # Singly or in bulk: the events Klaviyo kept, one per accepted post.
    delivered = [event["profile"]["data"]["attributes"]["email"]
                 for event in klaviyo.events.values()]
    assert sorted(delivered) == sorted(accepted)
    # And new posts are taken again, once the idle sender has cut its logs
    # back (its housekeeping runs every few seconds).
    deadline = time.monotonic() + 30
    while app.post(UPDATE, padded(9_999), headers=JSON, expect_errors=True).status_int != 200:
        assert time.monotonic() < deadline, "new posts are still refused"
        time.sleep(0.5)
