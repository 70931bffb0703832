"""The machine's real services (tests use the Redis and RabbitMQ running on the machine)."""

from __future__ import annotations

import os
import socket

import pytest

REDIS = "redis://127.0.0.1:6379/15"
RABBIT = "amqp://guest:guest@127.0.0.1:5672//"


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def require_redis() -> None:
    """Skip the calling module without Redis — except in CI, where it must run."""
    if listening(6379):
        return
    if os.environ.get("CI"):
        raise RuntimeError("Redis is not running on 127.0.0.1:6379 (.ci/run should start it)")
    pytest.skip("needs Redis on 127.0.0.1:6379", allow_module_level=True)


def free_port() -> int:
    """A port nothing listens on now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
