"""The answers the middleware gives itself: JSON, redirects and small HTML pages.

Every piece of text that came from the request or from Klaviyo is escaped
before it reaches HTML; JSON is produced by :mod:`json` only.
"""

from __future__ import annotations

import json
from typing import Any

from webob import Request, Response

from klaviyo_middleware.web.body import JSON_TYPES, media_type

_JSON_ACCEPT = ("application/json", "application/vnd.api+json")

def wants_json(request: Request) -> bool:
    """JSON for scripts: an Accept naming JSON, ``X-Requested-With`` or a JSON body."""
    accept = request.headers.get("Accept", "")
    return (
        any(kind in accept for kind in _JSON_ACCEPT)
        or "X-Requested-With" in request.headers
        or media_type(request.content_type) in JSON_TYPES
    )


def json_response(status: int, payload: Any, **headers: str) -> Response:
    response = Response(
        status=status,
        body=json.dumps(payload).encode("utf-8"),
        content_type="application/json",
    )
    response.headers.update(list(headers.items()))
    _no_store(response)
    return response


def html_response(status: int, html: str, language: str, **headers: str) -> Response:
    response = Response(
        status=status,
        body=html.encode("utf-8"),
        content_type="text/html",
        charset="utf-8",
    )
    response.content_language = language
    response.headers.update(list(headers.items()))
    _no_store(response)
    return response


class _AsWritten(Response):
    """A response whose ``Location`` is sent as written.

    WebOb makes a relative ``Location`` absolute from the request's ``Host``
    header, which the client chooses: behind a proxy that passes any Host
    through, ``/thanks`` would become ``http://evil.example/thanks``.
    Browsers resolve a relative ``Location`` against the page they asked
    for (RFC 9110 §10.2.2), which is the site's real address.
    """

    def _abs_headerlist(self, environ: dict[str, Any]) -> list[tuple[str, str]]:
        return list(self.headerlist)


def see_other(location: str) -> Response:
    response = _AsWritten(status=303, location=location)
    _no_store(response)
    return response


def method_not_allowed() -> Response:
    response = Response(
        status=405,
        body=b"This address only accepts form submissions (POST).\n",
        content_type="text/plain",
        charset="utf-8",
    )
    response.allow = ("POST",)
    return response


def _no_store(response: Response) -> None:
    # Answers carry the visitor's own errors; no cache should keep them.
    response.cache_control = "no-store"
