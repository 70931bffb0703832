"""``manage.py check``: ``settings.KLAVIYO_MIDDLEWARE`` checked at start-up,
with the message the middleware itself would raise."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.template import TemplateDoesNotExist, TemplateSyntaxError
from django.template.loader import get_template

from klaviyo_middleware.contrib.django.conf import (
    PAGE_TEMPLATE,
    SETTING,
    configured,
    middleware_options,
)
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.i18n.catalogs import Languages
from klaviyo_middleware.settings import BY_NAME, build_settings

E_INVALID = "klaviyo_middleware.E001"
E_NO_TEMPLATE = "klaviyo_middleware.E002"
W_NO_KEY = "klaviyo_middleware.W001"
W_NOT_WRAPPED = "klaviyo_middleware.W002"


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        options = middleware_options()
        declared = {name: value for name, value in options.items() if name in BY_NAME}
        checked = build_settings(declared)
        Languages(checked.languages, checked.locale_dir, options.get("messages"))
    except ConfigurationError as exc:
        if "api_key" in str(exc) and not configured().get("api_key"):
            return [Warning(
                str(exc), id=W_NO_KEY,
                hint=f"set {SETTING}['api_key'] or $KLAVIYO_PRIVATE_API_KEY; the site "
                     "will not start without it")]
        return [Error(str(exc), id=E_INVALID,
                      hint=f"see docs/configuration.md for {SETTING}")]
    return [*_page_template(), *_wsgi_application()]


def _page_template() -> list[CheckMessage]:
    """A page_template that is not there would fail every error page."""
    name = configured().get(PAGE_TEMPLATE)
    if not name:
        return []
    try:
        get_template(name)
    except TemplateDoesNotExist:
        return [Error(
            f"{SETTING}['{PAGE_TEMPLATE}'] names {name!r}, which Django's template loaders "
            "cannot find", id=E_NO_TEMPLATE,
            hint=f"put it at <a TEMPLATES DIRS entry>/{name} or <an app>/templates/{name} "
                 "(docs/django.md shows one)")]
    except TemplateSyntaxError as exc:
        return [Error(f"{SETTING}['{PAGE_TEMPLATE}'] ({name!r}) does not compile: {exc}",
                      id=E_NO_TEMPLATE)]
    return []


def _wsgi_application() -> list[CheckMessage]:
    """The forms only reach the middleware when the server runs the wrapped
    application: Django's default wsgi.py would leave them to the views.

    Read from the module's source, not imported: importing it would start
    the site (and its spool) inside ``manage.py check``."""
    target = getattr(settings, "WSGI_APPLICATION", None)
    hint = ("in wsgi.py: from klaviyo_middleware.contrib.django.wsgi import "
            "get_wsgi_application (docs/django.md); ASGI is not served")
    if not target:
        return [Warning("WSGI_APPLICATION is not set, so the server runs Django's own "
                        "application, without the middleware: Klaviyo forms get 404 or 403",
                        id=W_NOT_WRAPPED, hint=hint)]
    module = target.rpartition(".")[0]
    try:
        spec = importlib.util.find_spec(module)
        source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    except (ImportError, OSError, ValueError):
        return []
    if "klaviyo_middleware" in source:
        return []
    return [Warning(f"WSGI_APPLICATION ({target}) does not lead to klaviyo_middleware: Klaviyo "
                    "forms reach Django's views, which answer 404 or 403, and nothing is sent",
                    id=W_NOT_WRAPPED, hint=hint)]
