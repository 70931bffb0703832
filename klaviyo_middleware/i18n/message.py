"""Visitor-facing text marked for translation.

A :class:`Message` *is* its English text (a ``str``), so code that logs,
compares or serialises messages keeps working; it also remembers the
untranslated template and its values, so the page or JSON answer can look
the template up in a catalog and fill the values in afterwards. Babel finds
the templates by the marker :func:`msg` (``make messages``).
"""

from __future__ import annotations

from typing import Any


class Message(str):
    """English text that remembers its gettext ``msgid`` and ``{name}`` values."""

    msgid: str
    params: dict[str, Any]

    def __new__(cls, msgid: str, **params: Any) -> Message:
        text = msgid.format(**params) if params else msgid
        message = super().__new__(cls, text)
        message.msgid = msgid
        message.params = params
        return message


def msg(msgid: str, **params: Any) -> Message:
    """Mark ``msgid`` for translation; ``{name}`` placeholders take ``params``.

    Placeholders keep translators free to move a value within the sentence,
    which concatenated pieces would not."""
    return Message(msgid, **params)
