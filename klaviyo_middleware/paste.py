"""PasteDeploy entry point (the README's "Configuration").

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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.middleware import KlaviyoMiddleware
from klaviyo_middleware.settings import split_list

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

_TRUE = {"true", "yes", "on", "y", "t", "1"}
_FALSE = {"false", "no", "off", "n", "f", "0"}


def asbool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def asint(name: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {value!r}") from None


def asfloat(name: str, value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None


def astimeout(name: str, value: str) -> float | tuple[float, float]:
    parts = split_list(value)
    if len(parts) == 2:
        return asfloat(name, parts[0]), asfloat(name, parts[1])
    return asfloat(name, value)


def _as_str(name: str, value: str) -> str:
    return value


_CONVERTERS: dict[str, Callable[[str, str], Any]] = {
    "api_key": _as_str,
    "api_url": _as_str,
    "revision": _as_str,
    "delivery": _as_str,
    "allowed_hosts": lambda name, value: split_list(value),
    "secret": _as_str,
    "action_field": asbool,
    "phone_region": _as_str,
    "custom_source": _as_str,
    "event_prefix": _as_str,
    "sms_consent": _as_str,
    "timeout": astimeout,
    "sync_retry_budget": asfloat,
    "max_body_size": asint,
    "max_fields": asint,
    "max_depth": asint,
    "spool_path": _as_str,
    "spool_durability": _as_str,
    "spool_max_size": asint,
    "worker_threads": asint,
    "retry_max_age": asfloat,
    "rate_limit_share": asfloat,
    "allow_cross_site": asbool,
    "csrf_max_age": asfloat,
    "honeypot": _as_str,
    "client_rate_limit": _as_str,
    "trusted_proxies": asint,
    "max_lists": asint,
    "max_properties": asint,
    "max_string_length": asint,
    "log_personal_data": asbool,
    "broker_url": _as_str,
}


def filter_app_factory(
    app: WSGIApplication, global_conf: dict[str, str], **local_conf: str
) -> KlaviyoMiddleware:
    options: dict[str, Any] = {}
    for name, value in local_conf.items():
        converter = _CONVERTERS.get(name)
        if converter is None:
            known = ", ".join(sorted(_CONVERTERS))
            raise ConfigurationError(f"unknown klaviyo_middleware option {name!r}; known: {known}")
        options[name] = converter(name, value)
    return KlaviyoMiddleware(app, **options)


filter_app_factory.__doc__ = (__doc__ or "") + (KlaviyoMiddleware.__doc__ or "")
