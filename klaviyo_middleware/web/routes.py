"""Which request paths are Klaviyo Connect actions (see docs/forms.md).

Matching is one dictionary lookup on ``PATH_INFO`` so that pass-through
traffic pays almost nothing: every spelling the Craft plugin has used —
three handles (``klaviyoConnect``, ``klaviyoconnect``, ``klaviyo-connect``)
times four action names, with or without ``/actions`` in front, with or without a
trailing slash — is expanded once, at import time, into one table.

Each entry is a :class:`Route`: the action, and what an omitted
``subscribe``/``confirmOptIn`` field means. The route's name tells which era
of the plugin a form was written for: ``track`` is today's name, and today's
plugin only *adds* a person to a list unless the form posts ``subscribe=1``;
the first era's ``updateProfile`` subscribed unless told ``confirmOptIn=0``.
Both kinds of form keep meaning what they meant (docs/migrating-from-craft.md).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from klaviyo_middleware.model.submission import IDENTIFY, UPDATE_PROFILE, Action


class Route(NamedTuple):
    """What a matched path (or hidden ``action`` value) asks for."""

    action: Action
    # What a form that posts neither ``subscribe`` nor ``confirmOptIn`` means.
    subscribes_by_default: bool


_HANDLES: Final = ("klaviyoConnect", "klaviyoconnect", "klaviyo-connect")
_ACTIONS: Final[dict[str, Route]] = {
    "identify": Route(IDENTIFY, subscribes_by_default=False),
    # The first era: subscribing was the default.
    "updateProfile": Route(UPDATE_PROFILE, subscribes_by_default=True),
    "update-profile": Route(UPDATE_PROFILE, subscribes_by_default=True),
    # Today's plugin: list membership only, unless the form posts subscribe=1.
    "track": Route(UPDATE_PROFILE, subscribes_by_default=False),
}


def _expand() -> dict[str, Route]:
    table: dict[str, Route] = {}
    for handle in _HANDLES:
        for name, route in _ACTIONS.items():
            for prefix in ("/", "/actions/"):
                path = f"{prefix}{handle}/api/{name}"
                table[path] = route
                table[path + "/"] = route
    return table


ACTION_PATHS: Final[dict[str, Route]] = _expand()


def route_for_path(path_info: str) -> Route | None:
    """The route a ``PATH_INFO`` names, or ``None`` for every other path."""
    return ACTION_PATHS.get(path_info)


def route_for_field(value: str) -> Route | None:
    """The route named by a Craft-style hidden ``action`` form field
    (``klaviyoconnect/api/track``, as Twig's ``actionInput()`` writes it).

    Craft accepts the route with or without a leading slash and with an
    ``actions/`` prefix, so the same spellings as for paths are honoured.
    """
    value = value.strip()
    if not value.startswith("/"):
        value = "/" + value
    return ACTION_PATHS.get(value)
