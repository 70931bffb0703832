"""Shared pieces for the benchmark scripts: a slow stand-in Klaviyo, timing helpers."""

from __future__ import annotations

import io
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from klaviyo_middleware.demo import RecordingKlaviyo

API_KEY = "pk_benchmark_key_0000"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 512


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def slow_klaviyo(latency: float) -> Iterator[tuple[str, Counter[str]]]:
    """A stand-in Klaviyo on 127.0.0.1 answering after ``latency`` seconds."""
    recorder = RecordingKlaviyo(keep=10)
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        with lock:
            calls[environ["PATH_INFO"]] += 1
        time.sleep(latency)
        return recorder(environ, start_response)

    server = make_server("127.0.0.1", 0, app, _Server, _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", calls
    finally:
        server.shutdown()
        server.server_close()


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
