"""Many processes on one spool, SIGKILL mid-delivery, a real fork, exit flush."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from webob import Request

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.intake import intake_directory
from klaviyo_middleware.delivery.spool.store import Spool

from spool_process import start
from support.factories import submissions
from support.klaviyo_fake import API_KEY
from support.waiting import wait_for


def test_three_processes_one_killed_then_a_fresh_one_finishes(tmp_path, loopback_klaviyo):
    fake = loopback_klaviyo.fake
    fake.latency = 0.05
    path = tmp_path / "shared.sqlite3"
    spool = Spool(path, account_fingerprint(loopback_klaviyo.url, API_KEY))
    accepted = submissions(60)
    for item in accepted:
        spool.enqueue(item)
    spool.move_intake()  # no sender in this process: hand them to the others

    workers = [start("deliver", path, loopback_klaviyo.url) for _ in range(3)]
    try:
        wait_for(lambda: len(fake.events) >= 10)
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert victim.returncode == -signal.SIGKILL
        wait_for(lambda: len(fake.events) >= 30)
        for survivor in workers[1:]:
            survivor.send_signal(signal.SIGKILL)
            survivor.wait()
        fresh = start("flush", path, loopback_klaviyo.url, "60")
        assert fresh.wait(timeout=90) == 0
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()  # type: ignore[union-attr]
    fresh.stdout.close()  # type: ignore[union-attr]

    # Every accepted submission reached Klaviyo: profile, subscription, event.
    assert sorted(fake.events) == sorted(item.event.unique_id for item in accepted)  # type: ignore[union-attr]
    for item in accepted:
        event = fake.events[item.event.unique_id]  # type: ignore[union-attr]
        assert event["profile"]["data"]["attributes"]["email"] == item.profile["email"]
    emails = {item.profile["email"] for item in accepted}
    assert set(fake.profiles) == emails
    assert fake.subscribed == {"L1": emails}
    # Only a step in flight at the moment of a SIGKILL can be sent twice;
    # Klaviyo keeps one event per unique_id whatever happens.
    sent_events = Counter(body["data"]["attributes"]["unique_id"]
                          for body in fake.bodies("/api/events"))
    assert sum(count - 1 for count in sent_events.values()) <= 3 * 2
    assert spool.outstanding() == 0 and spool.dead_letters() == []


def test_a_real_fork_restarts_the_worker_in_the_child(tmp_path, loopback_klaviyo):
    middleware = KlaviyoMiddleware(lambda e, s: [], api_key=API_KEY, api_url=loopback_klaviyo.url,
                                   spool_path=str(tmp_path / "fork.sqlite3"))

    def submit(email: str) -> None:
        request = Request.blank("/klaviyoConnect/api/identify", method="POST",
                                POST={"email": email}, headers={"Accept": "application/json"})
        assert request.get_response(middleware).json["queued"] is True

    pid = os.fork()
    if pid == 0:  # the child: like a gunicorn worker after --preload
        code = 1
        try:
            submit("child@example.com")
            code = 0 if middleware.flush(20) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    submit("parent@example.com")
    assert middleware.flush(20)
    middleware.close()
    emails = [body["data"]["attributes"]["email"]
              for body in loopback_klaviyo.fake.bodies("/api/profile-import")]
    assert sorted(emails) == ["child@example.com", "parent@example.com"]


def test_exit_flushes_what_it_can(tmp_path, loopback_klaviyo):
    process = start("submit-exit", tmp_path / "exit.sqlite3", loopback_klaviyo.url)
    submission_id = process.stdout.readline().strip()  # type: ignore[union-attr]
    assert process.wait(timeout=30) == 0
    process.stdout.close()  # type: ignore[union-attr]
    assert submission_id in loopback_klaviyo.fake.events


def test_exit_with_klaviyo_down_is_bounded_and_keeps_the_submission(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    path = tmp_path / "down.sqlite3"
    process = start("submit-exit", path, closed_url)
    process.stdout.readline()  # type: ignore[union-attr]
    # Bounded: the exit flush gives up after a few seconds, it never hangs.
    assert process.wait(timeout=30) == 0
    process.stdout.close()  # type: ignore[union-attr]
    spool = Spool(path, account_fingerprint(closed_url, API_KEY))
    assert spool.outstanding() == 1


def test_forks_while_worker_threads_are_inside_sqlite(tmp_path, loopback_klaviyo):
    """Regression: a child forked mid-SQLite-call used to hang at its first query.

    Without the fork guard about one fork in 600 hung here; FORKS=2000 stresses it.
    """
    middleware = KlaviyoMiddleware(lambda e, s: [], api_key=API_KEY, api_url=loopback_klaviyo.url,
                                   spool_path=str(tmp_path / "busy.sqlite3"), sender_threads=4)
    spool = middleware.delivery.spool  # type: ignore[attr-defined]
    for item in submissions(200):
        spool.enqueue(item)
    # Spools that earlier tests left as cyclic garbage would close their
    # connections in whatever thread collects them, outside any guard:
    # collect them now, and let no collection start during the forks.
    gc.collect()
    gc.disable()
    children = []
    for _ in range(int(os.environ.get("FORKS", "200"))):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if spool.outstanding() >= 0 else 1
            finally:
                os._exit(code)
        children.append(pid)
    gc.enable()
    deadline = time.monotonic() + 30
    hung = []
    for pid in children:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                hung.append(pid)
                break
            time.sleep(0.01)
    assert hung == []
    assert middleware.flush(60)
    middleware.close()
    assert len(loopback_klaviyo.fake.events) == 200


def test_eight_processes_starting_together_on_a_fresh_spool(tmp_path):
    """gunicorn starts its workers at once: they race to create the file,
    switch it to WAL and add the tables; every one must get a working spool."""
    path = tmp_path / "fresh.sqlite3"
    start_at = time.time() + 1.5
    code = (
        "import sys, time\n"
        "from klaviyo_middleware.delivery.spool.store import Spool\n"
        "from klaviyo_middleware.model.submission import Submission\n"
        f"while time.time() < {start_at}: time.sleep(0.0005)\n"
        "spool = Spool(sys.argv[1], 'acct')\n"
        "spool.enqueue(Submission(action='identify', profile={'email': sys.argv[2]}))\n"
    )
    for attempt in range(3):
        if attempt:
            path.unlink()
            for suffix in ("-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            shutil.rmtree(intake_directory(path), ignore_errors=True)
            start_at = time.time() + 1.5
            code = code.replace(code.split("while time.time() < ")[1].split(":")[0],
                                str(start_at))
        processes = [subprocess.Popen([sys.executable, "-c", code, str(path),
                                       f"p{number}@example.com"], stderr=subprocess.PIPE,
                                      text=True) for number in range(8)]
        errors = [process.communicate(timeout=60)[1] for process in processes]
        assert [process.returncode for process in processes] == [0] * 8, errors
        # They exited without a sender: their intakes wait for adoption.
        checker = Spool(path, "acct")
        assert checker.adopt_orphans() == 8
        assert checker.outstanding() == 8
        checker.close_all()
