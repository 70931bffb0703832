"""``manage.py check``: ``settings.KLAVIYO_MIDDLEWARE`` checked at start-up,
with the message the middleware itself would raise."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from klaviyo_middleware.contrib.django.conf import SETTING, configured, middleware_options
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.i18n.catalogs import Languages
from klaviyo_middleware.settings import BY_NAME, build_settings

E_INVALID = "klaviyo_middleware.E001"
W_NO_KEY = "klaviyo_middleware.W001"


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
    return []
