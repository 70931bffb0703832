"""A small threaded WSGI server for the demo and the fake Klaviyo (not for production)."""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


class ThreadingServer(ThreadingMixIn, WSGIServer):
    # With sync delivery the middleware may call a fake Klaviyo served by this
    # same server while a request is open, so requests need their own threads.
    daemon_threads = True
    request_queue_size = 256


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make(host: str, port: int, app: WSGIApplication) -> ThreadingServer:
    server = make_server(host, port, app, ThreadingServer, QuietHandler)
    assert isinstance(server, ThreadingServer)
    return server


class BackgroundServer:
    """Serve ``app`` on ``host`` (port 0: any free port) in a daemon thread."""

    def __init__(self, app: WSGIApplication, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = make(host, port, app)
        self.url = f"http://{host}:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> BackgroundServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
