"""Django integration (docs/django.md).

1. ``INSTALLED_APPS += ["klaviyo_middleware.contrib.django"]``: the
   ``{% load klaviyo_connect %}`` template tags and a start-up check of the
   settings (``manage.py check``).
2. ``KLAVIYO_MIDDLEWARE = {"api_key": ..., ...}`` in ``settings.py``: the
   middleware's keyword arguments by the same names; callables may be given
   as dotted paths. By default the ``user`` mapping resolves Django's own
   session to the signed-in user, and pages follow Django's language.
3. ``wsgi.py``: ``from klaviyo_middleware.contrib.django.wsgi import
   get_wsgi_application`` in place of Django's own.
"""
from __future__ import annotations

from klaviyo_middleware.contrib import missing_extra

try:
    import django  # noqa: F401 - every part of the integration needs it
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "django") from None
