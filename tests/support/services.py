"""The real services the tests use, private to one run of the suite.

Two runs on one machine must not see each other's data nor eat each
other's tasks: each run starts a Redis server of its own (a free port, no
persistence, gone with the run) and uses a RabbitMQ virtual host of its own
on the machine's broker. The processes a test starts (Celery workers, web
servers) are registered here and killed with their process groups when the
run ends, and die with the run if it is killed itself.

The run's addresses travel in the environment (``KLAVIYO_TEST_REDIS_URL``,
``KLAVIYO_TEST_RABBIT_URL``), so the helper scripts the tests start as
processes find the same services.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

ENV_REDIS = "KLAVIYO_TEST_REDIS_URL"
ENV_RABBIT = "KLAVIYO_TEST_RABBIT_URL"
RABBIT_PORT = 5672

_processes: list[subprocess.Popen[Any]] = []

# A child that dies with the process that started it (Linux's parent-death
# signal, set after fork and kept across exec), whatever killed the run.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "parent = int(sys.argv[1])\n"
    "with __import__('contextlib').suppress(Exception):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != parent:\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def free_port() -> int:
    """A port nothing listens on now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def spawn(command: list[str], **options: Any) -> subprocess.Popen[Any]:
    """Start ``command`` in a process group of its own, killed with its
    children when the run ends (:func:`stop_all`) or dies."""
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        # The parent-death signal follows the thread that forked: only the
        # main thread lives as long as the run.
        command = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]
    process = subprocess.Popen(command, start_new_session=True, **options)
    _processes.append(process)
    return process


def stop(process: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop ``process`` and its process group (SIGKILL after ``timeout``)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # What the group leader left behind (a worker's pool) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def stop_all() -> None:
    while _processes:
        stop(_processes.pop(), timeout=10)


# -- the run's Redis --------------------------------------------------------


def start_private_redis() -> None:
    """Start this run's Redis server (once, in the run's main process) and
    name it in the environment; without ``redis-server`` the machine's Redis
    on 6379 is used, database 15."""
    if os.environ.get(ENV_REDIS):
        return
    binary = shutil.which("redis-server")
    if binary is None:
        os.environ[ENV_REDIS] = "redis://127.0.0.1:6379/15"
        return
    folder = tempfile.mkdtemp(prefix="klaviyo-test-redis-")
    port = free_port()
    spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", folder, "--logfile", os.path.join(folder, "log")],
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not listening(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"this run's redis-server did not start on port {port}")
        time.sleep(0.05)
    os.environ[ENV_REDIS] = f"redis://127.0.0.1:{port}/0"


def redis_url() -> str:
    return os.environ.get(ENV_REDIS) or "redis://127.0.0.1:6379/15"


def require_redis() -> None:
    """Skip the calling module without Redis — except in CI, where it must run."""
    port = urlsplit(redis_url()).port or 6379
    if listening(port):
        return
    if os.environ.get("CI"):
        raise RuntimeError(f"Redis is not running on 127.0.0.1:{port}")
    pytest.skip(f"needs Redis on 127.0.0.1:{port}", allow_module_level=True)


# -- the run's RabbitMQ virtual host --------------------------------------------


def plan_rabbit() -> None:
    """Name this run's virtual host; it is made on first use (rabbitmqctl
    takes seconds, and most runs of a few tests never need it)."""
    if not os.environ.get(ENV_RABBIT):
        vhost = f"klaviyo-test-{uuid.uuid4().hex[:12]}"
        os.environ[ENV_RABBIT] = f"amqp://guest:guest@127.0.0.1:{RABBIT_PORT}/{vhost}"


def rabbit_url() -> str:
    return os.environ.get(ENV_RABBIT) or f"amqp://guest:guest@127.0.0.1:{RABBIT_PORT}//"


_made_vhost: list[str] = []


def require_rabbit() -> None:
    """RabbitMQ with this run's virtual host, made here the first time;
    skipped without RabbitMQ, except in CI where the machine provides it."""
    if not listening(RABBIT_PORT):
        if os.environ.get("CI") and shutil.which("rabbitmq-server"):
            pytest.fail("RabbitMQ is installed but not running on 127.0.0.1:5672")
        pytest.skip("no RabbitMQ on this machine")
    vhost = urlsplit(rabbit_url()).path.lstrip("/")
    if not vhost or vhost in _made_vhost:
        return
    control = shutil.which("rabbitmqctl")
    if control is None:
        pytest.fail("RabbitMQ runs here but rabbitmqctl is missing: no private virtual host")
    for arguments in (["add_vhost", vhost],
                      ["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]):
        made = subprocess.run([control, "-q", *arguments], capture_output=True, text=True,
                              timeout=120, check=False)
        if made.returncode != 0 and "already exists" not in made.stderr:
            pytest.fail(f"rabbitmqctl {arguments[0]} failed: {made.stderr.strip()}")
    _made_vhost.append(vhost)


def drop_rabbit() -> None:
    control = shutil.which("rabbitmqctl")
    for vhost in _made_vhost:
        if control:
            subprocess.run([control, "-q", "delete_vhost", vhost], capture_output=True,
                           timeout=120, check=False)
    _made_vhost.clear()


def __getattr__(name: str) -> str:
    # Read when a test module imports them, after the run has started its
    # services (``from support.services import REDIS``).
    if name == "REDIS":
        return redis_url()
    if name == "RABBIT":
        return rabbit_url()
    raise AttributeError(name)
