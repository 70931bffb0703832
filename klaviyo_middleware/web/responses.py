"""The answers the middleware gives itself: JSON, redirects and small HTML pages.

Every piece of text that came from the request or from Klaviyo is escaped
before it reaches HTML; JSON is produced by :mod:`json` only.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from webob import Request, Response

from klaviyo_middleware.web.body import JSON_TYPES, media_type

_JSON_ACCEPT = ("application/json", "application/vnd.api+json")

_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>{title}</title></head>
<body>
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
"""


def wants_json(request: Request) -> bool:
    """JSON for scripts: an Accept naming JSON, ``X-Requested-With`` or a JSON body."""
    accept = request.headers.get("Accept", "")
    return (
        any(kind in accept for kind in _JSON_ACCEPT)
        or "X-Requested-With" in request.headers
        or media_type(request.content_type) in JSON_TYPES
    )


def json_response(status: int, payload: dict[str, Any], **headers: str) -> Response:
    response = Response(
        status=status,
        body=json.dumps(payload).encode("utf-8"),
        content_type="application/json",
    )
    response.headers.update(list(headers.items()))
    _no_store(response)
    return response


def html_response(status: int, title: str, body_html: str, **headers: str) -> Response:
    response = Response(
        status=status,
        body=_PAGE.format(title=escape(title), body=body_html).encode("utf-8"),
        content_type="text/html",
        charset="utf-8",
    )
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


def success_page() -> Response:
    return html_response(200, "Thank you", "<p>Your details have been saved.</p>")


def errors_page(status: int, errors: dict[str, list[str]], **headers: str) -> Response:
    items = "\n".join(
        f"<li><strong>{escape(_label(field))}</strong>: {escape(message)}</li>"
        for field, messages in errors.items()
        for message in messages
    )
    body = (
        "<p>Please go back and correct the following:</p>\n"
        f'<ul class="errors">\n{items}\n</ul>\n'
        '<p><a href="javascript:history.back()">Back to the form</a></p>'
    )
    return html_response(status, "Please check the form", body, **headers)


def method_not_allowed() -> Response:
    response = Response(
        status=405,
        body=b"This address only accepts form submissions (POST).\n",
        content_type="text/plain",
        charset="utf-8",
    )
    response.allow = ("POST",)
    return response


def _label(field: str) -> str:
    return "Form" if field == "form" else field


def _no_store(response: Response) -> None:
    # Answers carry the visitor's own errors; no cache should keep them.
    response.cache_control = "no-store"
