"""The hidden inputs of a Klaviyo Connect form, written for any template engine.

Craft's Twig forms carry ``{{ actionInput(...) }}``, ``{{ redirectInput(...) }}``
and ``{{ hiddenInput(...) }}``; :func:`hidden_inputs` writes the same fields in
one call, so a site moving to Flask, Pyramid or Django keeps its forms::

    {{ klaviyo_inputs("track", redirect="newsletter/thanks", list="AbC123",
                      subscribe=True) }}

The result is marked safe for Jinja2 and Django (it has ``__html__``);
every value in it is escaped. See docs/migrating-from-craft.md.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from functools import partial
from html import escape
from typing import Any

from klaviyo_middleware.web.redirects import sign_redirect
from klaviyo_middleware.web.routes import route_for_field


class HTML(str):
    """Text that template engines insert as it is (the ``__html__`` protocol
    honoured by Jinja2, MarkupSafe and Django)."""

    def __html__(self) -> str:
        return str(self)


def hidden_inputs(
    action: str | None = "track",
    *,
    redirect: str | None = None,
    list: str | None = None,
    lists: str | Iterable[str] = (),
    subscribe: bool | None = None,
    csrf_token: str | None = None,
    secret: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> HTML:
    """Hidden ``<input>`` elements for a form handled by the middleware.

    :param action: ``"track"``, ``"identify"``, ``"updateProfile"`` or a whole
        route (``"klaviyoconnect/api/track"``); written as the ``action``
        field, which the middleware reads with ``action_field=True``. Pass
        ``None`` when the form posts to the action path itself.
    :param redirect: where to go after success (``"/thanks"``, or Craft's
        site-relative ``"newsletter/thanks"``); signed when ``secret`` is
        given, as the middleware then requires.
    :param list: one Klaviyo list id; ``lists`` several (or comma-separated).
    :param subscribe: ``True`` gives marketing consent; ``False`` only adds
        to the lists; ``None`` leaves it to the route's default.
    :param csrf_token: a token from :func:`klaviyo_middleware.csrf_token`.
    :param fields: any other hidden fields (``{"event[name]": "Signed up"}``).
    """
    pairs: builtins.list[tuple[str, str]] = []
    if action is not None:
        pairs.append(("action", _route(action)))
    if redirect is not None:
        pairs.append(("redirect", sign_redirect(redirect, secret) if secret else redirect))
    if list is not None:
        pairs.append(("list", list))
    if isinstance(lists, str):
        lists = [item.strip() for item in lists.split(",") if item.strip()]
    pairs.extend(("lists[]", item) for item in lists)
    if subscribe is not None:
        pairs.append(("subscribe", "1" if subscribe else "0"))
    if csrf_token is not None:
        pairs.append(("csrf_token", csrf_token))
    pairs.extend((name, str(value)) for name, value in (fields or {}).items())
    return HTML("\n".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in pairs))


def _route(action: str) -> str:
    route = action if "/" in action else f"klaviyoconnect/api/{action}"
    if route_for_field(route) is None:
        raise ValueError(f"not a Klaviyo Connect action: {action!r}")
    return route


def jinja2_helper(secret: str | None = None) -> Any:
    """``hidden_inputs`` with the site's ``secret`` bound, for a Jinja2 global::

        app.jinja_env.globals["klaviyo_inputs"] = jinja2_helper(secret=SECRET)
    """
    return partial(hidden_inputs, secret=secret)
