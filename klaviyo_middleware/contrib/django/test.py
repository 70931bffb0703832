"""Django's test client, with requests passing through the middleware.

Django's ``Client`` calls the site's handler directly, not the WSGI
application of ``wsgi.py``, so a plain ``self.client.post`` to
``/klaviyoConnect/api/updateProfile`` would reach Django's URLconf and 404.
This client runs every request through the middleware configured from
``settings.KLAVIYO_MIDDLEWARE`` first; what the middleware passes on (or
``forward``\\s) is Django's usual test response, with ``templates`` and
``context``::

    from klaviyo_middleware.contrib.django.test import Client

    class SignupTests(TestCase):
        client_class = Client

        def test_signup(self):
            response = self.client.post("/klaviyoConnect/api/updateProfile",
                                        {"email": "a@example.com"})

In tests, set ``"delivery": "sync"`` and point ``"api_url"`` at a fake
Klaviyo (:func:`klaviyo_middleware.testing.serve_fake_klaviyo`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse, HttpResponseBase
from django.test import Client as DjangoClient
from django.test.client import ClientHandler

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.contrib.django.conf import (
    CRAFT_COMPAT_SETTING,
    configured,
    middleware_options,
)
from klaviyo_middleware.contrib.django.wsgi import remember

_current = threading.local()
# One middleware per configuration: a test client is made for every test,
# and each middleware has delivery resources of its own.
_middlewares: dict[str, KlaviyoMiddleware] = {}
_lock = threading.Lock()


def _django(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The inner WSGI app: the current test client's Django handler."""
    handler: ClientHandler = _current.handler
    response = ClientHandler.__call__(handler, environ)
    _current.response = response
    headers = [*response.items(),
               *(("Set-Cookie", morsel.OutputString()) for morsel in response.cookies.values())]
    start_response(f"{response.status_code} {response.reason_phrase}", headers)
    return []  # the client returns Django's response object itself


def _middleware() -> KlaviyoMiddleware:
    # Keyed by the settings it is built from (not by the built options, whose
    # page renderer is a new function each time): one per configuration.
    key = repr((sorted(configured().items()), settings.USE_I18N, settings.LANGUAGE_CODE,
                list(settings.LANGUAGES), getattr(settings, CRAFT_COMPAT_SETTING, None)))
    with _lock:
        middleware = _middlewares.get(key)
        if middleware is None:
            middleware = _middlewares[key] = KlaviyoMiddleware(_django, **middleware_options())
        remember(middleware)
        return middleware


class MiddlewareClientHandler(ClientHandler):
    def __call__(self, environ: dict[str, Any]) -> HttpResponseBase:
        _current.handler, _current.response = self, None
        started: dict[str, Any] = {}
        body_parts: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], object]:
            started.update(status=status, headers=headers)
            return body_parts.append

        chunks = _middleware()(environ, start_response)
        try:
            body = b"".join([*body_parts, *chunks])
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        django_response: HttpResponseBase | None = _current.response
        if django_response is not None:
            return django_response
        response = HttpResponse(body, status=int(started["status"].split()[0]))
        for name, value in started["headers"]:
            response[name] = value
        response.wsgi_request = WSGIRequest(environ)
        return response


class Client(DjangoClient):
    """``django.test.Client`` whose requests go through the middleware first."""

    def __init__(self, enforce_csrf_checks: bool = False, *args: Any, **kwargs: Any) -> None:
        super().__init__(enforce_csrf_checks, *args, **kwargs)
        self.handler = MiddlewareClientHandler(enforce_csrf_checks)
