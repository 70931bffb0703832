"""The Django app: template tags, the settings check, and a watch for a
Klaviyo form that reaches Django itself (the server runs an application the
middleware does not wrap)."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.signals import request_started

from klaviyo_middleware.notices import say_once
from klaviyo_middleware.redact import get_logger
from klaviyo_middleware.web.routes import ACTION_PATHS

log = get_logger(__name__)


class KlaviyoConnectConfig(AppConfig):
    name = "klaviyo_middleware.contrib.django"
    label = "klaviyo_connect"
    verbose_name = "Klaviyo Connect"

    def ready(self) -> None:
        from klaviyo_middleware.contrib.django.checks import check_settings

        checks.register(check_settings)
        request_started.connect(_unwrapped_form, dispatch_uid="klaviyo_middleware.unwrapped")


def _unwrapped_form(sender: Any, environ: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """A post to a Klaviyo Connect path that Django's handler received: the
    middleware would have answered it (or forwarded it, marked), so the
    server runs Django's own application. ``manage.py check`` says so as
    W002; a server never runs that, so the log says it too, once."""
    if not environ or environ.get("REQUEST_METHOD") != "POST":
        return
    path = environ.get("PATH_INFO", "")
    if path not in ACTION_PATHS or "klaviyo.result" in environ:
        return
    say_once(log, logging.ERROR, ("django unwrapped",),
             "klaviyo_middleware: a Klaviyo Connect form posted to %s reached Django's views, "
             "so nothing was sent: the server runs an application the middleware does not "
             "wrap. In wsgi.py: from klaviyo_middleware.contrib.django.wsgi import "
             "get_wsgi_application (docs/django.md)", path)
