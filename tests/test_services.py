"""A run of the suite keeps to its own services: its own Redis server, its
own RabbitMQ virtual host, and the processes it starts die with it — even
when the run itself is killed (a worker left behind would eat the next
run's tasks)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support import services
from support.waiting import wait_for

TESTS = Path(__file__).resolve().parent


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server here")
def test_the_run_has_a_redis_server_of_its_own():
    port = urlsplit(services.redis_url()).port
    assert port not in (None, 6379)
    assert services.listening(port)  # type: ignore[arg-type]


def test_the_run_has_a_rabbitmq_virtual_host_of_its_own():
    assert urlsplit(services.rabbit_url()).path.lstrip("/").startswith("klaviyo-test-")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has died; only its parent has not looked yet.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal")
def test_a_process_dies_with_the_run_that_started_it(tmp_path):
    """A stand-in for a run: it spawns a long sleeper the way tests start
    workers, then is killed outright; the sleeper must not outlive it."""
    pid_file = tmp_path / "child.pid"
    run = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[1]); from support import services; "
         "child = services.spawn(['sleep', '300']); "
         "open(sys.argv[2], 'w').write(str(child.pid)); time.sleep(300)",
         str(TESTS), str(pid_file)])
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=30)
        child = int(pid_file.read_text())
        wait_for(lambda: Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep"),
                 timeout=30)
        run.send_signal(signal.SIGKILL)
        run.wait()
        wait_for(lambda: not alive(child), timeout=30)
    finally:
        run.kill()
        run.wait()


def test_stop_takes_the_whole_process_group():
    leader = services.spawn([sys.executable, "-c",
                             "import subprocess, time; subprocess.Popen(['sleep', '300']); "
                             "time.sleep(300)"])
    try:
        wait_for(lambda: len(group_members(leader.pid)) >= 2, timeout=30)
        members = group_members(leader.pid)
    finally:
        services.stop(leader, timeout=5)
    wait_for(lambda: not any(alive(pid) for pid in members), timeout=30)


def group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[2]) == group:
                members.append(int(entry.name))
    return members
