"""A fake Klaviyo for the tests, built on ``responses``.

It records every call, checks headers and validates each body against
Klaviyo's OpenAPI request schema (violations are collected and fail the test
at teardown), and answers like Klaviyo unless a test scripts a failure.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import requests
import responses

from openapi_contract import operation_for, request_errors

API_URL = "https://klaviyo.test"
API_KEY = "pk_test_0123456789abcdef"
REVISION = "2026-07-15"


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Scripted:
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    exception: Exception | None = None


class FakeKlaviyo:
    def __init__(self, mock: responses.RequestsMock, api_url: str = API_URL) -> None:
        self.api_url = api_url
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self._script: dict[str, deque[Scripted]] = {}
        mock.add_callback(
            responses.POST, re.compile(re.escape(api_url) + r"/.*"), callback=self._answer
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
        queue = self._script.setdefault(path, deque())
        for _ in range(times):
            queue.append(Scripted(status, body, headers or {}, exception))

    # -- inspection ---------------------------------------------------------

    def paths(self) -> list[str]:
        return [call.path for call in self.calls]

    def bodies(self, path: str) -> list[Any]:
        return [call.body for call in self.calls if re.fullmatch(path, call.path)]

    # -- the server side ----------------------------------------------------

    def _answer(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        path = "/" + request.url.split("/", 3)[3].split("?", 1)[0]  # type: ignore[union-attr]
        raw = request.body or b""
        body = json.loads(raw if isinstance(raw, (bytes, str)) else b"")
        headers = dict(request.headers)
        self.calls.append(Call(request.method or "", path, headers, body))
        self._check(request.method or "", path, headers, body)
        for pattern, queue in self._script.items():
            if queue and re.fullmatch(pattern, path):
                scripted = queue.popleft()
                if scripted.exception is not None:
                    raise scripted.exception
                text = scripted.body if isinstance(scripted.body, str) else json.dumps(
                    scripted.body
                    if scripted.body is not None
                    else {"errors": [_error(scripted.status)]}
                )
                return scripted.status, scripted.headers, text
        return self._success(path, body)

    def _check(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        expected = {
            "Authorization": f"Klaviyo-API-Key {API_KEY}",
            "revision": REVISION,
            "Content-Type": "application/vnd.api+json",
            "Accept": "application/vnd.api+json",
        }
        for name, value in expected.items():
            if headers.get(name) != value:
                self.violations.append(f"{method} {path}: header {name}={headers.get(name)!r}")
        try:
            operation_for(method, path)
        except LookupError as exc:
            self.violations.append(str(exc))
            return
        for error in request_errors(method, path, body):
            self.violations.append(f"{method} {path}: {error}")

    @staticmethod
    def _success(path: str, body: Any) -> tuple[int, dict[str, str], str]:
        if path == "/api/profile-import":
            email = body["data"]["attributes"].get("email", "")
            profile_id = "01" + hashlib.sha256(email.encode()).hexdigest()[:24].upper()
            answer = {"data": {"type": "profile", "id": profile_id, "attributes": {}}}
            return 201, {"Content-Type": "application/vnd.api+json"}, json.dumps(answer)
        if re.fullmatch(r"/api/lists/[^/]+/relationships/profiles", path):
            return 204, {}, ""
        return 202, {}, ""


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
