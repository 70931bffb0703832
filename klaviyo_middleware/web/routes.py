"""Which request paths are Klaviyo Connect actions (see docs/forms.md).

Matching is one dictionary lookup on ``PATH_INFO`` so that pass-through
traffic pays almost nothing: every spelling the Craft plugin has used —
four handles (``klaviyoConnect``, ``klaviyoconnect``, ``klaviyo-connect``
and the renamed successor's ``klaviyo-connect-plus``) times five actions
(``api/identify``, ``api/updateProfile``, ``api/update-profile``,
``api/track`` and the first README's ``lists/addToLists``), with or
without ``/actions`` in front, with or without a trailing slash — is
expanded once, at import time, into one table.

Each entry is a :class:`Route`: the action, the name the form posted, and
what a form that posts neither ``subscribe`` nor ``useSubscribeEndpoint``
nor ``confirmOptIn`` means. The route's name tells which era of the plugin
a form was written for: ``track`` is today's name, and today's plugin only
*adds* a person to a list unless the form posts ``subscribe=1``; the first
era's ``updateProfile`` subscribed. Both kinds of form keep meaning what
they meant (docs/migrating-from-craft.md).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from klaviyo_middleware.model.submission import IDENTIFY, UPDATE_PROFILE, Action


class Route(NamedTuple):
    """What a matched path (or hidden ``action`` value) asks for."""

    action: Action
    # What a form that posts neither ``subscribe`` nor ``confirmOptIn`` means.
    subscribes_by_default: bool
    # The action's name as the form posted it (``track``, ``updateProfile``),
    # which is what the JSON answer reports back.
    name: str


# The plugin's handle in each era, and its renamed successor's (Foster
# Commerce's own checkout posts to klaviyo-connect-plus/api/track).
_HANDLES: Final = ("klaviyoConnect", "klaviyoconnect", "klaviyo-connect", "klaviyo-connect-plus")
_ACTIONS: Final[dict[str, Route]] = {
    "api/identify": Route(IDENTIFY, subscribes_by_default=False, name="identify"),
    # The first era: subscribing was the default.
    "api/updateProfile": Route(UPDATE_PROFILE, subscribes_by_default=True, name="updateProfile"),
    "api/update-profile": Route(UPDATE_PROFILE, subscribes_by_default=True,
                                name="update-profile"),
    # The first README's list sign-up (early 2018), before updateProfile.
    "lists/addToLists": Route(UPDATE_PROFILE, subscribes_by_default=True, name="addToLists"),
    # Today's plugin: list membership only, unless the form posts subscribe=1.
    "api/track": Route(UPDATE_PROFILE, subscribes_by_default=False, name="track"),
}


def _expand() -> dict[str, Route]:
    table: dict[str, Route] = {}
    for handle in _HANDLES:
        for name, route in _ACTIONS.items():
            for prefix in ("/", "/actions/"):
                path = f"{prefix}{handle}/{name}"
                table[path] = route
                table[path + "/"] = route
    return table


ACTION_PATHS: Final[dict[str, Route]] = _expand()


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
