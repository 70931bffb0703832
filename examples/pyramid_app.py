"""A Pyramid site wrapped in the middleware, directly or from development.ini."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response

from klaviyo_middleware import KlaviyoMiddleware

SIGNUP_FORM = """<!doctype html>
<title>Newsletter</title>
<form method="post" action="/klaviyo-connect/api/update-profile">
  <input type="hidden" name="lists[]" value="Y6nRLr">
  <input type="hidden" name="redirect" value="/thanks">
  <label>Email <input type="email" name="email" required></label>
  <button>Sign up</button>
</form>
"""


def signup(request: Request) -> Response:
    return Response(SIGNUP_FORM)


def thanks(request: Request) -> Response:
    return Response("<!doctype html><title>Thanks</title><h1>Thanks for signing up!</h1>")


def make_pyramid_app() -> Any:
    with Configurator() as config:
        config.add_route("signup", "/")
        config.add_view(signup, route_name="signup")
        config.add_route("thanks", "/thanks")
        config.add_view(thanks, route_name="thanks")
        return config.make_wsgi_app()


def paste_app(global_conf: dict[str, str], **settings: str) -> Any:
    """The app factory ``development.ini`` uses (the middleware is a filter there)."""
    return make_pyramid_app()


def main() -> KlaviyoMiddleware:
    """Wrapped in code: the key comes from ``KLAVIYO_PRIVATE_API_KEY``."""
    return KlaviyoMiddleware(make_pyramid_app())
