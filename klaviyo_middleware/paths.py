"""Which request paths are Klaviyo Connect actions (DESIGN §2).

Matching is one dictionary lookup on ``PATH_INFO`` so that pass-through
traffic pays almost nothing: every accepted spelling (camelCase or kebab-case,
with or without ``/actions`` in front, with or without a trailing slash) is
expanded once, at import time.
"""

from __future__ import annotations

from typing import Final, Literal

Action = Literal["identify", "updateProfile"]

IDENTIFY: Final = "identify"
UPDATE_PROFILE: Final = "updateProfile"

# The spellings used by the Craft plugin over its lifetime; the value of a
# hidden ``action`` field uses the same names without the leading slash.
_ACTION_NAMES: Final[dict[str, Action]] = {
    "klaviyoConnect/api/identify": IDENTIFY,
    "klaviyo-connect/api/identify": IDENTIFY,
    "klaviyoConnect/api/updateProfile": UPDATE_PROFILE,
    "klaviyo-connect/api/update-profile": UPDATE_PROFILE,
    "klaviyoConnect/api/track": UPDATE_PROFILE,
    "klaviyo-connect/api/track": UPDATE_PROFILE,
}


def _expand() -> dict[str, Action]:
    table: dict[str, Action] = {}
    for name, action in _ACTION_NAMES.items():
        for prefix in ("/", "/actions/"):
            table[prefix + name] = action
            table[prefix + name + "/"] = action
    return table


ACTION_PATHS: Final[dict[str, Action]] = _expand()


def action_for_path(path_info: str) -> Action | None:
    """The action a ``PATH_INFO`` names, or ``None`` for every other path."""
    return ACTION_PATHS.get(path_info)


def action_for_field(value: str) -> Action | None:
    """The action named by a Craft-style hidden ``action`` form field.

    Craft accepts the route with or without a leading slash and with an
    ``actions/`` prefix, so the same spellings as for paths are honoured.
    """
    value = value.strip()
    if not value.startswith("/"):
        value = "/" + value
    return ACTION_PATHS.get(value)
