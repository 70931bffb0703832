"""Requests that are not Klaviyo actions reach the inner app untouched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from wsgiref.validate import validator

import pytest
import webob
from webtest import TestApp

from klaviyo_middleware import KlaviyoMiddleware

from support.klaviyo_fake import API_KEY


class ClosingBody:
    """An app iterable that records whether the server closed it."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


class StreamingApp:
    def __init__(self) -> None:
        self.bodies: list[ClosingBody] = []
        self.environs: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> ClosingBody:
        self.environs.append(environ)
        received = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response(
            "418 I'm a teapot",
            [("Content-Type", "application/octet-stream"), ("X-Custom", "kept"),
             ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")],
        )
        body = ClosingBody([b"\x00\xffchunk-1|", received, b"|chunk-2"])
        self.bodies.append(body)
        return body


@pytest.fixture
def streaming() -> StreamingApp:
    return StreamingApp()


@pytest.fixture
def wrapped(streaming: StreamingApp) -> TestApp:
    return TestApp(validator(KlaviyoMiddleware(validator(streaming), api_key=API_KEY)))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/klaviyoConnect/api/identify/extra"),
        ("POST", "/contact"),
        ("POST", "/KLAVIYOCONNECT/API/IDENTIFY"),
        ("PUT", "/klaviyoConnect/api"),
        ("POST", "/klaviyoConnect/api/unknownAction"),
        ("DELETE", "/items/1"),
    ],
)
def test_other_requests_pass_through_byte_for_byte(wrapped, streaming, method, path):
    body = b"raw \xf0\x9f\x92\xa9 bytes & email=x@example.com" if method != "GET" else b""
    response = wrapped.request(
        path, method=method, body=body, headers={"Content-Type": "application/x-foo"},
        expect_errors=True,
    )
    assert response.status == "418 I'm a teapot"
    assert response.body == b"\x00\xffchunk-1|" + body + b"|chunk-2"
    assert response.headers["X-Custom"] == "kept"
    assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert streaming.bodies[-1].closed is True
    assert streaming.environs[-1]["PATH_INFO"] == path
    assert "klaviyo.result" not in streaming.environs[-1]


def test_pass_through_returns_the_apps_own_iterable(streaming):
    middleware = KlaviyoMiddleware(streaming, api_key=API_KEY)
    environ = webob.Request.blank("/page").environ
    result = middleware(environ, lambda status, headers, exc_info=None: None)
    assert result is streaming.bodies[-1]


def test_pass_through_builds_no_request_object(streaming):
    middleware = KlaviyoMiddleware(streaming, api_key=API_KEY)
    environ = webob.Request.blank("/page", method="POST", POST={"email": "a@b.com"}).environ
    keys_before = set(environ)
    middleware(environ, lambda status, headers, exc_info=None: None)
    # WebOb leaves "webob.*" keys behind when a Request parses anything.
    assert set(environ) == keys_before


def test_form_posts_elsewhere_are_not_read_without_action_field(streaming):
    middleware = KlaviyoMiddleware(streaming, api_key=API_KEY)
    request = webob.Request.blank(
        "/page", method="POST", POST={"action": "klaviyoConnect/api/identify", "email": "a@b.com"}
    )
    response = request.get_response(middleware)
    assert response.status_int == 418
    assert b"action=klaviyoConnect" in response.body


def test_app_mounted_under_script_name_matches_on_path_info(make_app, klaviyo, inner):
    app = make_app()
    response = app.post(
        "/klaviyoConnect/api/identify",
        {"email": "a@example.com"},
        extra_environ={"SCRIPT_NAME": "/shop"},
        headers={"Accept": "application/json"},
    )
    assert response.json["success"] is True
    assert klaviyo.paths() == ["/api/profile-import"]
    assert inner.calls == []
