"""The tests' view of Klaviyo: the shipped fake, recorded and held to the spec.

What Klaviyo does with a call is :class:`klaviyo_middleware.testing.FakeKlaviyo`'s
business — the one fake, shipped for users too. This wrapper adds what only
our own tests need: it records every call, validates each body against
Klaviyo's request models (the official SDK's, see ``klaviyo_models``; and
Klaviyo's OpenAPI spec too when ``$KLAVIYO_OPENAPI_SPEC`` names a copy —
violations are collected and fail the test at teardown), lets a test script failures or
latency, and shows what Klaviyo holds in the shapes the tests compare
(profiles by email, subscribers by list, events by ``unique_id``). It is
served through ``responses`` (in-process) or by :class:`LoopbackKlaviyo`, a
real HTTP server on 127.0.0.1 that other processes can reach.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
import responses
from webob import Request

from klaviyo_middleware.testing import FakeKlaviyo as ShippedFake

from support import klaviyo_models, openapi_contract

API_URL = "https://klaviyo.test"
API_KEY = "pk_test_0123456789abcdef"
REVISION = "2026-07-15"

Answer = tuple[int, dict[str, str], str]


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = 0.0


@dataclass
class Scripted:
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    exception: Exception | None = None


class MockedKlaviyo:
    """The shipped ``FakeKlaviyo``, recorded and held to the spec (see the
    module); a name of its own, so that one name means one class."""

    def __init__(self, mock: responses.RequestsMock | None = None, api_url: str = API_URL):
        self.api_url = api_url
        self.calls: list[Call] = []
        self.violations: list[str] = []
        # What Klaviyo holds lives in the shipped fake; rate limits are
        # tested on their own, not in every test.
        # Import jobs are processed in the background, as Klaviyo does, but
        # quickly: tests follow them within a moment.
        self.klaviyo = ShippedFake(api_key=API_KEY, rate_limits=False, job_seconds=0.05)
        self.latency = 0.0
        # (low, high): each call waits a random time in between, so that
        # concurrent calls finish in no particular order.
        self.latency_range: tuple[float, float] | None = None
        self._script: dict[str, deque[Scripted]] = {}
        self._lock = threading.Lock()
        if mock is not None:
            for method in (responses.POST, responses.GET):
                mock.add_callback(
                    method, re.compile(re.escape(api_url) + r"/.*"), callback=self._callback
                )

    # -- scripting ----------------------------------------------------------

    def fail(
        self,
        path: str,
        status: int = 500,
        *,
        times: int = 1,
        body: Any = None,
        headers: dict[str, str] | None = None,
        exception: Exception | None = None,
    ) -> None:
        """Answer the next ``times`` calls to ``path`` (a regex) with a failure."""
        with self._lock:
            queue = self._script.setdefault(path, deque())
            for _ in range(times):
                queue.append(Scripted(status, body, headers or {}, exception))

    # -- inspection ---------------------------------------------------------

    def paths(self) -> list[str]:
        with self._lock:
            return [call.path for call in self.calls]

    def bodies(self, path: str) -> list[Any]:
        with self._lock:
            return [call.body for call in self.calls if re.fullmatch(path, call.path)]

    def times(self, path: str) -> list[float]:
        with self._lock:
            return [call.at for call in self.calls if re.fullmatch(path, call.path)]

    # -- the server side ----------------------------------------------------

    def _callback(self, request: requests.PreparedRequest) -> Answer:
        path = "/" + (request.url or "").split("/", 3)[3].split("?", 1)[0]
        raw = request.body or b""
        body = json.loads(raw) if isinstance(raw, (bytes, str)) and raw else None
        query = (request.url or "").partition("?")[2]
        return self.handle(request.method or "", path, dict(request.headers), body, query,
                           self.api_url)

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any,
               query: str = "", base: str = API_URL) -> Answer:
        if self.latency:
            time.sleep(self.latency)
        if self.latency_range:
            time.sleep(random.uniform(*self.latency_range))
        with self._lock:
            self.calls.append(Call(method, path, headers, body, time.monotonic()))
            self._check(method, path, headers, body)
            for pattern, queue in self._script.items():
                if queue and re.fullmatch(pattern, path):
                    scripted = queue.popleft()
                    if scripted.exception is not None:
                        raise scripted.exception
                    return scripted.status, scripted.headers, _error_text(scripted)
            return self._success(method, path, headers, body, f"{base}{path}?{query}")

    def _check(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        expected = {
            "Authorization": f"Klaviyo-API-Key {API_KEY}",
            "revision": REVISION,
            "Content-Type": "application/vnd.api+json",
            "Accept": "application/vnd.api+json",
        }
        lowered = {name.lower(): value for name, value in headers.items()}
        for name, value in expected.items():
            if lowered.get(name.lower()) != value:
                # The header's name only: a key has no place in a test report.
                self.violations.append(f"{method} {path}: header {name}")
        try:
            klaviyo_models.operation_for(method, path)
        except LookupError as exc:
            self.violations.append(str(exc))
            return
        if method != "POST":
            if body is not None:
                self.violations.append(f"{method} {path}: a body on a read")
            return
        errors = klaviyo_models.request_errors(method, path, body)
        if openapi_contract.spec_available():
            errors += openapi_contract.request_errors(method, path, body)
        for error in errors:
            self.violations.append(f"{method} {path}: {error}")

    def _success(self, method: str, path: str, headers: dict[str, str], body: Any,
                 url: str) -> Answer:
        wanted = {"authorization", "revision", "content-type", "accept"}
        request = Request.blank(url.rstrip("?"), method=method,
                                body=json.dumps(body).encode() if method == "POST" else b"",
                                headers={name: value for name, value in headers.items()
                                         if name.lower() in wanted})
        response = request.get_response(self.klaviyo)
        answer_headers = {"Content-Type": response.content_type} if response.body else {}
        return response.status_int, answer_headers, response.text

    # -- what Klaviyo holds, as the tests compare it ------------------------------

    @property
    def state(self) -> Any:
        # Jobs whose time has come show, as they would to a reader of Klaviyo.
        self.klaviyo.state.process_jobs()
        return self.klaviyo.state

    def _key(self, profile_id: str) -> str:
        """Profiles are named by email, else phone number, else id."""
        profile = self.state.profiles.get(profile_id, {})
        return str(profile.get("email") or profile.get("phone_number") or profile_id)

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        with self.state.lock:
            return {self._key(pid): {key: value for key, value in profile.items()
                                     if key not in ("created", "updated")}
                    for pid, profile in self.state.profiles.items()}

    @property
    def members(self) -> dict[str, set[str]]:
        with self.state.lock:
            return {item.id: {self._key(pid) for pid in item.members}
                    for item in self.state.lists.values() if item.members}

    def _subscribers(self, channel: str) -> dict[str, set[str]]:
        with self.state.lock:
            return {item.id: {self._key(pid) for pid in item.subscribers[channel]}
                    for item in self.state.lists.values() if item.subscribers.get(channel)}

    @property
    def subscribed(self) -> dict[str, set[str]]:
        """List → email addresses subscribed to email marketing through it."""
        return self._subscribers("email")

    @property
    def sms_subscribed(self) -> dict[str, set[str]]:
        """List → phone numbers subscribed to SMS marketing through it."""
        return self._subscribers("sms")

    @property
    def events(self) -> dict[str, dict[str, Any]]:
        """``unique_id`` → the event Klaviyo kept (the first one), with its profile."""
        kept: dict[str, dict[str, Any]] = {}
        with self.state.lock:
            for event in self.state.events:
                profile = self.state.profiles.get(event["profile_id"], {})
                identity = {key: profile[key] for key in ("email", "phone_number", "external_id")
                            if profile.get(key)}
                # The profile as the tests know it, not Klaviyo's id for it.
                shown = {key: value for key, value in event.items() if key != "profile_id"}
                kept.setdefault(event["unique_id"], {
                    **shown, "profile": {"data": {"type": "profile", "attributes": identity}}})
        return kept


def _error_text(scripted: Scripted) -> str:
    if isinstance(scripted.body, str):
        return scripted.body
    body = scripted.body if scripted.body is not None else {"errors": [_error(scripted.status)]}
    return json.dumps(body)


def _error(status: int) -> dict[str, Any]:
    codes = {400: "invalid", 401: "not_authenticated", 403: "permission_denied",
             404: "not_found", 429: "throttled"}
    return {
        "id": "00000000-0000-0000-0000-000000000000",
        "status": status,
        "code": codes.get(status, "error"),
        "title": "Request failed.",
        "detail": f"Scripted failure {status}.",
        "source": {"pointer": "/data/"},
    }


class LoopbackKlaviyo:
    """Serves a :class:`MockedKlaviyo` over real HTTP on 127.0.0.1."""

    def __init__(self, fake: MockedKlaviyo | None = None) -> None:
        self.fake = fake or MockedKlaviyo()
        behaviour = self.fake

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.do_POST(method="GET")

            def do_POST(self, method: str = "POST") -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, query = self.path.partition("?")
                try:
                    body = json.loads(raw) if raw else None
                    status, headers, text = behaviour.handle(
                        method, path, dict(self.headers.items()), body, query,
                        f"http://{self.headers.get('Host')}"
                    )
                except ConnectionError:
                    self.close_connection = True
                    return
                payload = text.encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackKlaviyo:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
