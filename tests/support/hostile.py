"""An upstream that misbehaves on purpose, on a real 127.0.0.1 port.

Each path answers as the test scripted it: dripping a byte at a time,
redirecting, answering far more than Klaviyo ever does, or a shape Klaviyo
never sends. Every request is recorded (path, headers), so a test can say
what reached it — and what never did.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (handler) → None: writes the whole answer itself.
Behaviour = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class HostileUpstream:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                upstream.seen.append(Seen(self.command, path, dict(self.headers)))
                behaviour = upstream.behaviours.get(path, json_answer(404, b'{"errors":[]}'))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    behaviour(self)

            do_GET = do_POST = _any  # http.server dispatches on these names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HostileUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]


def json_answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Behaviour:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/vnd.api+json")
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
    return answer


def drip(upstream: HostileUpstream, every: float = 0.2, most: float = 60.0,
         in_headers: bool = False) -> Behaviour:
    """A byte every ``every`` seconds (of the body, or of the headers), for
    ``most`` seconds at the most, then the rest: each read is quick, the
    answer takes as long as the upstream likes."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        if in_headers:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while time.monotonic() - started < most and not upstream.stopping.is_set():
                handler.wfile.write(b"X-Drip: .\r\n")
                handler.wfile.flush()
                time.sleep(every)
            handler.wfile.write(b"Content-Length: 0\r\n\r\n")
            return
        body = b'{"data": null}' + b" " * 10_000
        handler.send_response(202)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for index in range(len(body)):
            if time.monotonic() - started >= most or upstream.stopping.is_set():
                handler.wfile.write(body[index:])
                return
            handler.wfile.write(body[index:index + 1])
            handler.wfile.flush()
            time.sleep(every)
    return answer


def forward(target: str) -> Behaviour:
    """Pass the call on to ``target`` (a fake Klaviyo) and its answer back."""
    import requests

    wanted = ("authorization", "revision", "content-type", "accept")

    def answer(handler: BaseHTTPRequestHandler) -> None:
        headers = {name: value for name, value in handler.headers.items()
                   if name.lower() in wanted}
        passed = requests.request(handler.command, target + handler.path, headers=headers,
                                  data=getattr(handler, "body", b""), timeout=30)
        json_answer(passed.status_code, passed.content)(handler)
    return answer


def unless(poisoned: bytes, bad: Behaviour, then: Behaviour) -> Behaviour:
    """``bad`` for any call whose body holds ``poisoned``, ``then`` for the rest."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        (bad if poisoned in getattr(handler, "body", b"") else then)(handler)
    return answer


def first(count: int, bad: Behaviour, then: Behaviour) -> Behaviour:
    """``bad`` for the first ``count`` calls, ``then`` for the rest."""
    lock = threading.Lock()
    calls = [0]

    def answer(handler: BaseHTTPRequestHandler) -> None:
        with lock:
            calls[0] += 1
            chosen = bad if calls[0] <= count else then
        chosen(handler)
    return answer


def huge(size: int, chunked: bool = False) -> Behaviour:
    """A 200 of ``size`` bytes of JSON-looking filler, sent as fast as it goes."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/vnd.api+json")
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Content-Length", str(size))
        handler.end_headers()
        block = b" " * 65536
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            if chunked:
                handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            else:
                handler.wfile.write(piece)
            sent += len(piece)
        if chunked:
            handler.wfile.write(b"0\r\n\r\n")
    return answer

