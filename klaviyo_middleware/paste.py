"""PasteDeploy entry point (docs/configuration.md).

.. code-block:: ini

    [filter:klaviyo]
    use = egg:klaviyo_middleware#main
    allowed_hosts = shop.example.com, .example.com
    action_field = true

Every ini value arrives as a string; this factory converts them to the types
:class:`~klaviyo_middleware.KlaviyoMiddleware` takes, so the same checks
apply whichever way the middleware is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.middleware import KlaviyoMiddleware
from klaviyo_middleware.settings import BY_NAME, current_names, unknown_option_message

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


def filter_app_factory(
    app: WSGIApplication, global_conf: dict[str, str], **local_conf: str
) -> KlaviyoMiddleware:
    # Each declared option knows how to read itself from text; the options
    # that take Python objects (hooks, loaders) have no ini form.
    options: dict[str, Any] = {}
    for name, value in current_names(local_conf, where="the ini file's filter section").items():
        declared = BY_NAME.get(name)
        if declared is None:
            raise ConfigurationError(unknown_option_message(name))
        options[name] = declared.from_text(name, value)
    return KlaviyoMiddleware(app, **options)


filter_app_factory.__doc__ = (__doc__ or "") + (KlaviyoMiddleware.__doc__ or "")
