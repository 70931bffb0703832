"""The signed-in Django user for the ``user`` profile mapping.

The middleware runs before Django's own stack, so there is no
``request.user`` yet: the session cookie is resolved with Django's session
engine and ``django.contrib.auth.get_user``, exactly as
``AuthenticationMiddleware`` would, on a bare request.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest, parse_cookie


def session_user_loader(environ: dict[str, Any]) -> Any:
    """The authenticated user of the request's session, or ``None``."""
    key = parse_cookie(environ.get("HTTP_COOKIE", "")).get(settings.SESSION_COOKIE_NAME)
    if not key or not apps.is_installed("django.contrib.auth"):
        return None
    from django.contrib.auth import get_user

    request = HttpRequest()
    request.META = environ
    engine = import_module(settings.SESSION_ENGINE)
    request.session = engine.SessionStore(key)
    try:
        user = get_user(request)
        return user if user.is_authenticated else None
    finally:
        # Outside Django's request cycle nobody else would give the
        # connection back (request_finished does that for views).
        close_old_connections()
