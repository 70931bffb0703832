"""One HTTP call to Klaviyo, with bounds nothing upstream can stretch.

``requests``' timeouts bound each socket operation, not the call: an
upstream (or a proxy in front of Klaviyo) that drips a byte every few
seconds keeps a call — and the sender thread making it — for ever. Here a
call has a wall-clock deadline: when it passes, a timer shuts the
connection's socket down, which ends whatever the calling thread is blocked
in (the TLS handshake, the headers, the body). Redirects are never followed
(the key would go with them, and a page that says 200 elsewhere is not
Klaviyo taking the call), and an answer is read only up to
:data:`MAX_ANSWER_BYTES`: Klaviyo's answers to these endpoints are
kilobytes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

MAX_ANSWER_BYTES = 1024 * 1024

# The connections the current thread's call has used, for its deadline timer.
_current = threading.local()


class DeadlinePassed(Exception):
    """The call outlived its deadline; its connection was shut down."""


class AnswerTooLarge(Exception):
    """The answer was longer than :data:`MAX_ANSWER_BYTES`."""


class _Watched:
    """A connection pool that tells the calling thread which connection its
    call got, so that the call's deadline can shut that one down."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        watched: list[Any] | None = getattr(_current, "connections", None)
        if watched is not None:
            watched.append(connection)
        return connection


class _HTTPPool(_Watched, HTTPConnectionPool):
    pass


class _HTTPSPool(_Watched, HTTPSConnectionPool):
    pass


class BoundedAdapter(HTTPAdapter):
    """``requests``' adapter on pools whose connections a deadline can reach."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def bounded_session() -> requests.Session:
    session = requests.Session()
    adapter = BoundedAdapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


@dataclass(frozen=True)
class Answer:
    """What Klaviyo answered, read whole (within the bounds)."""

    status_code: int
    headers: CaseInsensitiveDict[str]
    content: bytes

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` if it is not."""
        return json.loads(self.content)


def call(session: requests.Session, method: str, url: str, *,
         timeout: tuple[float, float], deadline: float, **arguments: Any) -> Answer:
    """``method url`` through ``session``, done within ``deadline`` seconds or
    :class:`DeadlinePassed`; :class:`AnswerTooLarge`; ``requests``' own
    exceptions for a connection that fails."""
    connections: list[Any] = []
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        for connection in connections:
            sock = getattr(connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, deadline), cut)
    timer.daemon = True
    _current.connections = connections
    timer.start()
    try:
        response = session.request(method, url, timeout=timeout, stream=True,
                                   allow_redirects=False, **arguments)
        try:
            body = _read(response)
        finally:
            response.close()
    except requests.RequestException:
        if expired.is_set():
            raise DeadlinePassed from None
        raise
    finally:
        timer.cancel()
        _current.connections = None
    if expired.is_set():
        # Cut short at the deadline: what was read may be a part.
        raise DeadlinePassed
    return Answer(response.status_code, response.headers, body)


def _read(response: requests.Response) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise AnswerTooLarge
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AnswerTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
