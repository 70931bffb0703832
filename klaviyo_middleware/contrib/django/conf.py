"""``settings.KLAVIYO_MIDDLEWARE``: the middleware's keywords, read the Django way.

Keys are the keyword arguments of :class:`~klaviyo_middleware.KlaviyoMiddleware`
(docs/configuration.md), plus ``page_template``: a Django template
name for the middleware's own pages. ``action_field`` defaults to on (the
template tag writes a hidden ``action``); ``settings.KLAVIYO_CRAFT_COMPAT``
is read as ``craft_compat`` too. Keys that take a Python callable
accept a dotted path as well (``"shop.klaviyo.before_send"``), as Django's
own settings do. Unset keys fall back to the environment, then the defaults;
``user_loader`` and ``language_loader`` default to Django's session and
language (:mod:`.auth`, :mod:`.language`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from klaviyo_middleware import ConfigurationError, KlaviyoMiddleware
from klaviyo_middleware.i18n.catalogs import Overrides, available_languages
from klaviyo_middleware.settings import BY_NAME, current_names, unknown_option_message

SETTING = "KLAVIYO_MIDDLEWARE"
PAGE_TEMPLATE = "page_template"
# The one switch for a site moving from Craft, also as a setting of its own.
CRAFT_COMPAT_SETTING = "KLAVIYO_CRAFT_COMPAT"
# Keywords that take Python objects (the declared options take text, numbers, lists).
CALLABLE_KEYS = frozenset(
    name for name, parameter in inspect.signature(KlaviyoMiddleware.__init__).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY and name not in BY_NAME)
# Dotted paths name one callable, or a list of them for the hooks that take several.
_LISTS_OF_CALLABLES = frozenset({"before_send", "on_delivered", "on_retry", "on_dead"})


def configured() -> dict[str, Any]:
    """The setting as given (a copy), ``{}`` when absent."""
    value = getattr(settings, SETTING, {})
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"settings.{SETTING} must be a dict, got {type(value).__name__}")
    return dict(value)


def middleware_options() -> dict[str, Any]:
    """The keyword arguments for :class:`KlaviyoMiddleware` from the settings."""
    from klaviyo_middleware.contrib.django.auth import session_user_loader
    from klaviyo_middleware.contrib.django.language import django_language
    from klaviyo_middleware.contrib.django.pages import django_renderer

    given = current_names(configured(), where=f"settings.{SETTING}")
    for name in given:
        if name not in BY_NAME and name not in CALLABLE_KEYS and name != PAGE_TEMPLATE:
            raise ConfigurationError(f"settings.{SETTING}: " + unknown_option_message(name))
    options = {name: _imported(name, value) if name in CALLABLE_KEYS else value
               for name, value in given.items() if name != PAGE_TEMPLATE}
    # {% klaviyo_inputs %} writes a hidden action field and the form posts
    # to its own page: without action_field nothing would reach Klaviyo.
    options.setdefault("action_field", True)
    if "craft_compat" not in given and getattr(settings, CRAFT_COMPAT_SETTING, None) is not None:
        options["craft_compat"] = getattr(settings, CRAFT_COMPAT_SETTING)
    options.setdefault("user_loader", session_user_loader)
    options.setdefault("language_loader", django_language)
    template = given.get(PAGE_TEMPLATE)
    if template is not None:
        if "page_renderer" in given:
            raise ConfigurationError(
                f"settings.{SETTING}: give page_template or page_renderer, not both")
        options["page_renderer"] = django_renderer(template)
    if "languages" not in given:
        options["languages"] = site_languages(options.get("locale_dir"), options.get("messages"))
    return options


def site_languages(locale_dir: str | None = None,
                   overrides: Overrides | None = None) -> tuple[str, ...] | None:
    """The site's ``LANGUAGES`` the middleware can speak (shipped catalogs,
    the site's ``locale_dir``, ``messages``), ``LANGUAGE_CODE`` first;
    ``None`` (every language it can speak) when the site uses no translation."""
    if not settings.USE_I18N:
        return None
    available = set(available_languages(locale_dir, overrides))
    primary = settings.LANGUAGE_CODE.split("-")[0].lower()
    tags = [code.lower() for code, _ in settings.LANGUAGES]
    tags = [primary, *tags] if primary not in tags else sorted(tags, key=lambda t: t != primary)
    chosen: list[str] = []
    for tag in tags:
        base = tag.split("-")[0]
        if tag in available and tag not in chosen:
            chosen.append(tag)
        elif base in available and base not in chosen:
            chosen.append(base)
    return tuple(chosen) or None


def _imported(name: str, value: Any) -> Any:
    if isinstance(value, str):
        return _import(name, value)
    if name in _LISTS_OF_CALLABLES and isinstance(value, (list, tuple)):
        return [_import(name, item) if isinstance(item, str) else item for item in value]
    return value


def _import(name: str, path: str) -> Any:
    try:
        return import_string(path)
    except ImportError as exc:
        raise ConfigurationError(f"settings.{SETTING}[{name!r}]: cannot import {path!r} "
                                 f"({exc})") from None
