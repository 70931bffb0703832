"""The Django app: template tags and the settings check."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class KlaviyoConnectConfig(AppConfig):
    name = "klaviyo_middleware.contrib.django"
    label = "klaviyo_connect"
    verbose_name = "Klaviyo Connect"

    def ready(self) -> None:
        from klaviyo_middleware.contrib.django.checks import check_settings

        checks.register(check_settings)
