"""A fake Klaviyo for the tests.

:class:`FakeKlaviyo` is the behaviour: it records every call, checks headers
and validates each body against Klaviyo's OpenAPI request schema (violations
are collected and fail the test at teardown), keeps events the way Klaviyo
does (the first per ``unique_id`` wins) and answers like Klaviyo unless a
test scripts failures or latency. It is served either through ``responses``
(in-process) or by :class:`LoopbackKlaviyo`, a real HTTP server on
127.0.0.1 that other processes can reach.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
import responses

from openapi_contract import operation_for, request_errors

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


class FakeKlaviyo:
    def __init__(self, mock: responses.RequestsMock | None = None, api_url: str = API_URL):
        self.api_url = api_url
        self.calls: list[Call] = []
        self.violations: list[str] = []
        # Klaviyo's side of things, whichever endpoints put it there.
        self.profiles: dict[str, dict[str, Any]] = {}
        self.members: dict[str, set[str]] = {}
        # list → emails with email consent, and phone numbers with SMS consent.
        self.subscribed: dict[str, set[str]] = {}
        self.sms_subscribed: dict[str, set[str]] = {}
        self.events: dict[str, Any] = {}
        self._ids: dict[str, str] = {}
        self.latency = 0.0
        self._script: dict[str, deque[Scripted]] = {}
        self._lock = threading.Lock()
        if mock is not None:
            mock.add_callback(
                responses.POST, re.compile(re.escape(api_url) + r"/.*"), callback=self._callback
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
        body = json.loads(raw if isinstance(raw, (bytes, str)) else b"")
        return self.handle(request.method or "", path, dict(request.headers), body)

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.calls.append(Call(method, path, headers, body, time.monotonic()))
            self._check(method, path, headers, body)
            for pattern, queue in self._script.items():
                if queue and re.fullmatch(pattern, path):
                    scripted = queue.popleft()
                    if scripted.exception is not None:
                        raise scripted.exception
                    return scripted.status, scripted.headers, _error_text(scripted)
            return self._success(path, body)

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
                self.violations.append(f"{method} {path}: header {name}={lowered.get(name)!r}")
        try:
            operation_for(method, path)
        except LookupError as exc:
            self.violations.append(str(exc))
            return
        for error in request_errors(method, path, body):
            self.violations.append(f"{method} {path}: {error}")

    def _success(self, path: str, body: Any) -> Answer:
        data = body["data"]
        if path == "/api/profile-import":
            profile_id = self._upsert(data["attributes"])
            answer = {"data": {"type": "profile", "id": profile_id, "attributes": {}}}
            return 201, {"Content-Type": "application/vnd.api+json"}, json.dumps(answer)
        if path == "/api/profile-bulk-import-jobs":
            lists = data.get("relationships", {}).get("lists", {}).get("data", [])
            for profile in data["attributes"]["profiles"]["data"]:
                self._upsert(profile["attributes"])
                for entry in lists:
                    self.members.setdefault(entry["id"], set()).add(
                        profile["attributes"].get("email")
                        or profile["attributes"]["phone_number"])
            return 202, {}, ""
        if path == "/api/profile-subscription-bulk-create-jobs":
            list_id = data["relationships"]["list"]["data"]["id"]
            for profile in data["attributes"]["profiles"]["data"]:
                attributes = profile["attributes"]
                channels = attributes.get("subscriptions", {})
                self._upsert({key: attributes[key] for key in ("email", "phone_number")
                              if key in attributes})
                if "email" in channels:
                    self.subscribed.setdefault(list_id, set()).add(attributes["email"])
                if "sms" in channels:
                    self.sms_subscribed.setdefault(list_id, set()).add(
                        attributes["phone_number"])
            return 202, {}, ""
        if path == "/api/events":
            attributes = data["attributes"]
            self._upsert(attributes["profile"]["data"]["attributes"])
            # Klaviyo keeps the first event per unique_id and drops repeats.
            self.events.setdefault(attributes["unique_id"], attributes)
            return 202, {}, ""
        if path == "/api/event-bulk-create-jobs":
            for item in data["attributes"]["events-bulk-create"]["data"]:
                profile = item["attributes"]["profile"]
                self._upsert(profile["data"]["attributes"])
                for event in item["attributes"]["events"]["data"]:
                    attributes = dict(event["attributes"], profile=profile)
                    self.events.setdefault(attributes["unique_id"], attributes)
            return 202, {}, ""
        match = re.fullmatch(r"/api/lists/([^/]+)/relationships/profiles", path)
        if match:
            emails = {email for email, known in self._ids.items()
                      if known in {entry["id"] for entry in data}}
            self.members.setdefault(match.group(1), set()).update(emails)
            return 204, {}, ""
        return 202, {}, ""

    def _upsert(self, attributes: dict[str, Any]) -> str:
        """Profiles are keyed by email, or by phone number when there is none."""
        key = attributes.get("email") or attributes.get("phone_number", "")
        self.profiles.setdefault(key, {}).update(attributes)
        return self._ids.setdefault(
            key, "01" + hashlib.sha256(key.encode()).hexdigest()[:24].upper())


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
    """Serves a :class:`FakeKlaviyo` over real HTTP on 127.0.0.1."""

    def __init__(self, fake: FakeKlaviyo | None = None) -> None:
        self.fake = fake or FakeKlaviyo()
        behaviour = self.fake

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"null")
                    status, headers, text = behaviour.handle(
                        "POST", self.path.split("?", 1)[0], dict(self.headers.items()), body
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
