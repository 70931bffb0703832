"""Shared pieces for the benchmark scripts: a slow stand-in Klaviyo, timing helpers."""

from __future__ import annotations

import io
import socket
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from klaviyo_middleware.testing import FakeKlaviyo, Faults
from klaviyo_middleware.testing.server import BackgroundServer

API_KEY = "pk_benchmark_key_0000"


@contextmanager
def slow_klaviyo(latency: float, rate_limits: bool = False) -> Iterator[tuple[str, Counter[str]]]:
    """A fake Klaviyo on 127.0.0.1 answering after ``latency`` seconds.

    Yields its URL and a live count of calls per path ("429" counts throttled ones).
    """
    fake = FakeKlaviyo(rate_limits=rate_limits, faults=Faults(latency=latency))
    calls: Counter[str] = Counter()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        calls[environ["PATH_INFO"]] += 1
        return fake(environ, start_response)

    with BackgroundServer(app) as server:
        try:
            yield server.url, calls
        finally:
            calls["429"] = fake.limiter.throttled


def calls_by_endpoint(calls: Counter[str]) -> str:
    """``calls`` per endpoint, for printing; an import job's polls (one path
    per job) are counted together."""
    named: Counter[str] = Counter()
    for path, count in calls.items():
        named["import job polls" if path.startswith("/api/profile-bulk-import-jobs/")
              else path.rsplit("/", 1)[-1]] += count
    return ", ".join(f"{name} {count}" for name, count in sorted(named.items()))


def site(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The app behind the middleware: the benchmarks measure what is in front of it."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def form_environ(number: int) -> dict[str, Any]:
    body = (f"email=person{number}%40example.com&first_name=P&list=Y6nRLr"
            f"&event%5Bname%5D=Signed+up&event%5Bvalue%5D=9.5").encode()
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/klaviyoConnect/api/updateProfile",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_ACCEPT": "application/json",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def call(app: Callable[..., Any], environ: dict[str, Any]) -> str:
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    assert status[0].startswith("200"), (status, body)
    return status[0]


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"p50": statistics.median(ordered), "p95": at(0.95), "p99": at(0.99)}


def free_port() -> int:
    """A loopback port nobody listens on, for a server the benchmark starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, seconds: float = 10.0) -> None:
    """Return once something accepts connections on ``port`` (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)


def paced(start_at: float, seconds: float, rate: float | None, first: int) -> Iterator[int]:
    """Numbers from ``first`` on, one per 1/``rate`` seconds (as fast as the
    caller goes when ``rate`` is None), from the wall-clock time ``start_at``
    for ``seconds``: several processes load a server together."""
    while time.time() < start_at:
        time.sleep(0.001)
    number = first
    next_at = time.perf_counter()
    while time.time() < start_at + seconds:
        if rate is not None:
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            next_at += 1 / rate
        yield number
        number += 1
