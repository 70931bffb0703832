"""``wsgi.py`` in one line::

    from klaviyo_middleware.contrib.django.wsgi import get_wsgi_application
    application = get_wsgi_application()

It is Django's own ``get_wsgi_application()`` wrapped in the middleware,
configured from ``settings.KLAVIYO_MIDDLEWARE``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import django
from django.core.wsgi import get_wsgi_application as django_wsgi_application

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.contrib.django.conf import middleware_options

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


def get_wsgi_application() -> KlaviyoMiddleware:
    """Django's WSGI application, wrapped; the settings are read once, here."""
    return wrap(django_wsgi_application())


_current: list[KlaviyoMiddleware] = []


def wrap(application: WSGIApplication) -> KlaviyoMiddleware:
    """Wrap an existing WSGI application (WhiteNoise's, say) with the
    middleware configured from the settings."""
    django.setup(set_prefix=False)
    middleware = KlaviyoMiddleware(application, **middleware_options())
    remember(middleware)
    return middleware


def remember(middleware: KlaviyoMiddleware) -> None:
    """The process's middleware, for views that answer as it would."""
    _current[:] = [middleware]


def current() -> KlaviyoMiddleware | None:
    return _current[0] if _current else None
