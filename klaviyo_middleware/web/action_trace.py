"""A trace for posts that carry a Klaviyo Connect ``action`` the middleware leaves alone.

Craft forms post to their own page with a hidden ``action`` field. When the
middleware is not reading that field (``action_field`` off), or cannot (a
body sent without a length, or over ``max_body_size``), or the field names
an action it does not handle, the post goes to the app unchanged -- and the
app, which knows nothing of Klaviyo, answers as if all were well. Nothing
would reach Klaviyo and nobody would know.

So such a post's body is watched as the *app* reads it: the input stream is
wrapped in :class:`ActionWatch`, which looks for an ``action`` naming a
Klaviyo Connect route in each chunk and, the first time a form path shows
one, logs a warning naming the fix. The middleware reads nothing itself,
so the app still gets the body byte for byte, streamed as before, and a
post that is not a form costs one wrapper object.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import unquote

from klaviyo_middleware.notices import warn_once

# Where an ``action`` field's value starts, per kind of body: urlencoded
# (``action=klaviyoconnect%2Fapi%2Ftrack``), multipart (the part named
# ``action``, after its headers) and JSON (``"action": "..."``).
_STARTS = {
    "urlencoded": rb"(?:^|&)action=",
    "multipart": rb'name="?action"?(?:;[^\r\n]*)?\r?\n(?:[^\r\n]+\r?\n){0,3}\r?\n',
    "json": rb'"action"\s*:\s*"',
}
# A route under one of the plugin's handles, and what ends the value; at
# the end of the body the value may simply stop.
# (JSON may write "/" as "\/", as PHP's json_encode does.)
_SLASH = rb"(?:%2F|\\?/)"
_ROUTE_VALUE = (rb"\s*(" + _SLASH + rb"?(?:actions" + _SLASH + rb")?klaviyo-?connect(?:-plus)?"
                + _SLASH + rb"[A-Za-z0-9%/_\\-]{1,80})")
_PATTERNS = {kind: (re.compile(start + _ROUTE_VALUE + rb'(?=[&"\r\n])', re.IGNORECASE),
                    re.compile(start + _ROUTE_VALUE + rb'(?:[&"\r\n]|\Z)', re.IGNORECASE))
             for kind, start in _STARTS.items()}
# The same routes, in an ``action`` value already read.
_ROUTE = re.compile(r"^/?(?:actions/)?klaviyo-?connect(?:-plus)?/", re.IGNORECASE)
# Every route above holds "klaviyo" in some case; searching for these first
# (a plain substring search) keeps the regular expressions off ordinary bodies.
_HINTS = (b"laviyo", b"LAVIYO")
# Enough of the previous chunk to find a match that straddles two reads.
_OVERLAP = 1024

# Why the middleware did not act on the action; each reason names its fix.
OFF = "off"
UNREAD = "unread"
UNKNOWN = "unknown"
MALFORMED = "malformed"

_FIXES = {
    OFF: "action_field is off, so the middleware does not read hidden action fields: "
         "set action_field=True (or craft_compat=True), or post the form to /actions/%s",
    UNREAD: "the middleware could not read the body (sent without Content-Length, or "
            "larger than max_body_size), so the app got it unread: send the form with "
            "a length, within max_body_size",
    UNKNOWN: "the middleware handles api/identify, api/updateProfile, api/update-profile, "
             "api/track and lists/addToLists, not this: check the action's spelling",
    MALFORMED: "the middleware could not parse the body (not UTF-8, too many fields, or "
               "malformed), so the app got it unchanged: check how the form is sent",
}


def body_kind(media_type: str) -> str:
    """``urlencoded``, ``multipart`` or ``json`` for a body's media type."""
    if media_type == "multipart/form-data":
        return "multipart"
    if media_type == "application/x-www-form-urlencoded":
        return "urlencoded"
    return "json"


def may_name_an_action(chunk: bytes) -> bool:
    """Cheap first look: can ``chunk`` hold a Klaviyo Connect route at all?"""
    return any(hint in chunk for hint in _HINTS)


def action_in(chunk: bytes, kind: str, complete: bool = True) -> str | None:
    """The Klaviyo Connect route an ``action`` field in ``chunk`` names,
    decoded; ``complete`` when ``chunk`` runs to the end of the body."""
    if not may_name_an_action(chunk):
        return None
    match = _PATTERNS[kind][complete].search(chunk)
    if match is None:
        return None
    value = match.group(1).decode("ascii", "replace").replace("\\/", "/")
    return unquote(value).strip("/")


def names_klaviyo_connect(value: str) -> bool:
    """Whether an ``action`` value names a route of the plugin (any handle)."""
    return _ROUTE.match(value.strip()) is not None


def report(log: logging.Logger, path: str, action: str, reason: str) -> None:
    """Warn, once per form path and reason, that a post's action was not acted on."""
    fix = _FIXES[reason] % action if reason == OFF else _FIXES[reason]
    warn_once(log, (reason, path),
              "klaviyo_middleware: a post to %s carries action=%s, which reached the app "
              "unchanged and was not sent to Klaviyo; %s", path, action, fix)


class ActionWatch:
    """A WSGI input stream that reports a Klaviyo Connect action as it is read."""

    def __init__(self, stream: IO[bytes], log: logging.Logger, path: str, reason: str,
                 kind: str, length: int | None) -> None:
        self._stream = stream
        self._log = log
        self._path = path
        self._reason = reason
        self._kind = kind
        # The declared length, so the last read is known even when the app
        # never asks past it (a value may end the body without a separator).
        self._left = length
        self._tail = b""
        self._found = False

    def _see(self, chunk: bytes) -> bytes:
        if self._found:
            return chunk
        if self._left is not None:
            self._left -= len(chunk)
        window = self._tail + chunk
        complete = not chunk or (self._left is not None and self._left <= 0)
        action = action_in(window, self._kind, complete)
        if action is not None:
            self._found = True
            self._tail = b""
            report(self._log, self._path, action, self._reason)
        else:
            self._tail = window[-_OVERLAP:]
        return chunk

    def read(self, size: int = -1) -> bytes:
        return self._see(self._stream.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._see(self._stream.readline(size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return [self._see(line) for line in self._stream.readlines(hint)]

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            yield self._see(chunk)

    def __getattr__(self, name: str) -> Any:
        # Servers' streams have more (close, a file descriptor …); pass it on.
        return getattr(self._stream, name)
