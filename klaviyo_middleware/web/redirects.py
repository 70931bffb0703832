"""Where a visitor may be sent next: redirect and forward targets (docs/forms.md, "Answers").

A public form that redirects to whatever it is told is an open redirect, so
targets are refused unless they are plainly same-site paths or absolute URLs
on ``allowed_hosts``. Browsers are lenient in ways that matter here — they
treat ``\\`` like ``/`` and drop tabs and newlines inside URLs, so
``/\\evil.example`` and ``/\\t/evil.example`` both become ``//evil.example`` —
so backslashes and control characters are refused outright rather than
cleaned up. Non-ASCII characters are percent-encoded as UTF-8, as browsers
do (``/über-uns`` is a real page), which leaves look-alikes inert.

Craft writes ``redirectInput('newsletter/thanks')`` without a leading slash,
meaning the page at the site's root: such targets are resolved against the
application's ``SCRIPT_NAME``.

When a ``secret`` is configured, ``redirect`` values must be signed with
:func:`sign_redirect` (an HMAC-SHA256 hex digest in front of the URL, the
layout of Craft's ``redirectInput``), so a form cannot be re-pointed by
whoever posts to it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable
from urllib.parse import SplitResult, quote, unquote, unquote_to_bytes, urlsplit

from klaviyo_middleware.i18n.message import msg
from klaviyo_middleware.web.fields import FieldError
from klaviyo_middleware.web.routes import ACTION_PATHS

MAX_TARGET_LENGTH = 2048
# Characters some parsers read as "/", "\\" or "." (IIS's best-fit mapping,
# NFKC normalisation, lenient proxies). Encoded they are inert to browsers,
# but no real page name needs them, so they are refused outright.
_LOOK_ALIKES = frozenset("\u2215\u2044\u29f8\u29f5\u29f9\u2216\u3031\u3033\u3035"
                         "\uff0f\uff3c\ufe68\u3002\uff0e\ufe52\u2024\uff61")
DIGEST_LENGTH = 64  # hex SHA-256
_SIGNED = re.compile(r"^[0-9a-f]{64}.")


def sign_redirect(url: str, secret: str) -> str:
    """Sign ``url`` for a hidden ``redirect`` field when ``secret`` is set.

    >>> sign_redirect("/thanks", "s3cret")[64:]
    '/thanks'
    """
    return _digest(url, secret) + url


def unsign_redirect(value: str, secret: str) -> str:
    """The URL inside a signed value; raises :class:`FieldError` if tampered with."""
    digest, url = value[:DIGEST_LENGTH], value[DIGEST_LENGTH:]
    # Bytes, not str: compare_digest refuses non-ASCII text with a TypeError.
    expected = _digest(url, secret).encode("ascii")
    if len(value) <= DIGEST_LENGTH or not hmac.compare_digest(digest.encode("utf-8"), expected):
        raise FieldError(msg("The redirect is not signed by this site."))
    return url


def looks_signed(value: str) -> bool:
    """Whether ``value`` has the layout of a signed redirect (64 hex digits,
    then the URL), as Craft's ``redirectInput()`` writes."""
    return _SIGNED.match(value) is not None


def _digest(url: str, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), url.encode("utf-8"), hashlib.sha256).hexdigest()


class HostPolicy:
    """Hosts that absolute redirect targets may point at.

    Entries are host names (``shop.example.com``), host:port pairs, or a
    leading-dot wildcard (``.example.com`` for the domain and every subdomain).
    """

    def __init__(self, hosts: Iterable[str]) -> None:
        self.hosts = tuple(host.strip().lower() for host in hosts if host.strip())
        # Each entry as (host, port or None), IPv6 brackets removed.
        self._entries = tuple(split_host(host) for host in self.hosts)

    def allows(self, netloc: str) -> bool:
        host, port = split_host(netloc)
        for allowed, allowed_port in self._entries:
            if allowed_port is not None and allowed_port != port:
                continue
            if allowed.startswith("."):
                if host == allowed[1:] or host.endswith(allowed):
                    return True
            elif allowed == host:
                return True
        return False


def split_host(netloc: str) -> tuple[str, str | None]:
    """``'Shop.example.com:8000'`` → ``('shop.example.com', '8000')``; IPv6
    literals lose their brackets (``'[::1]:8000'`` → ``('::1', '8000')``), so
    that a Host header and a parsed URL compare equal."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") and rest[1:] else None
    if netloc.count(":") == 1:
        host, _, port = netloc.partition(":")
        return host, port or None
    return netloc, None


def split_url(value: str) -> SplitResult | None:
    """``urlsplit``, or ``None`` for what it cannot parse (``http://[x``)."""
    try:
        parts = urlsplit(value)
        # .port raises for a port that is not a number; touch it here.
        _ = parts.port
    except ValueError:
        return None
    return parts


def encode_non_ascii(value: str) -> str:
    """Percent-encode non-ASCII characters as UTF-8 (``/über-uns`` →
    ``/%C3%BCber-uns``), as a browser does, leaving ASCII as it is.

    Encoded, a full-width solidus or an ideographic full stop is inert: it
    can never be read as "/" or "." and so never make a second slash or
    another host. Invisible and spacing characters (bidi controls,
    zero-width and non-breaking spaces) have no place in a link and are
    refused instead.
    """
    if value.isascii():
        return value
    encoded = []
    for char in value:
        if char.isascii():
            encoded.append(char)
        elif char in _LOOK_ALIKES or unicodedata.category(char)[0] in "ZC":
            raise FieldError(msg("The address contains characters that are not allowed."))
        else:
            encoded.append(quote(char, safe=""))
    return "".join(encoded)


def _check_characters(value: str) -> str:
    """``value`` with non-ASCII encoded; raises :class:`FieldError` for
    characters that browsers or proxies reinterpret."""
    if len(value) > MAX_TARGET_LENGTH:
        raise FieldError(msg("The address is too long."))
    value = encode_non_ascii(value)
    if len(value) > MAX_TARGET_LENGTH:
        raise FieldError(msg("The address is too long."))
    if any(ord(char) < 0x21 for char in value):
        raise FieldError(msg("The address contains characters that are not allowed."))
    # Decoded, the address may hold spaces and UTF-8, but never the control
    # characters and backslashes that browsers and proxies reinterpret.
    for text in _decodings(value):
        if "\\" in text or any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
            raise FieldError(msg("The address contains characters that are not allowed."))
        if any(char in _LOOK_ALIKES for char in text):
            raise FieldError(msg("The address contains characters that are not allowed."))
    return value


def _decodings(value: str) -> list[str]:
    """``value`` and its percent-decodings, up to three layers deep."""
    layers = [value]
    for _ in range(3):
        decoded = unquote(layers[-1], errors="replace")
        if decoded == layers[-1]:
            break
        layers.append(decoded)
    return layers


def _is_same_site_path(value: str) -> bool:
    # Also judged after percent-decoding: "/%2F%2Fevil" is "//evil" to any
    # server or proxy that decodes before redirecting again.
    return all(
        text.startswith("/") and not text.startswith("//") for text in _decodings(value)
    )


def _plainly_relative(value: str) -> bool:
    """A path with no scheme, also once decoded (``javascript%3Aalert(1)``
    is refused, not made a page name)."""
    for text in _decodings(value):
        parts = split_url(text)
        if parts is None or parts.scheme or parts.netloc or text.startswith(("/", "\\")):
            return False
    return True


def safe_redirect(value: str, hosts: HostPolicy, root: str = "") -> str:
    """The ``Location`` for a redirect target; raises :class:`FieldError`.

    Same-site paths (``/thanks``), Craft's site-relative paths
    (``newsletter/thanks``: ``root``, the application's ``SCRIPT_NAME``,
    then ``/newsletter/thanks``) and absolute URLs on ``hosts``.
    """
    value = _check_characters(value)
    parts = split_url(value)
    if not value.startswith("/") and _plainly_relative(value):
        # Craft's redirectInput('newsletter/thanks'): relative to the site.
        value = root.rstrip("/") + "/" + value
    if _is_same_site_path(value):
        return value
    if (
        parts is not None
        and parts.scheme in ("http", "https")
        and parts.netloc
        and "@" not in parts.netloc
        and parts.netloc.isascii()
    ):
        if hosts.allows(parts.netloc):
            return value
        # A plain URL on another host: perhaps the site's own, not listed.
        raise HostNotAllowed(msg("Redirects may only go to a page on this site."),
                             parts.netloc.lower())
    raise FieldError(msg("Redirects may only go to a page on this site."))


class HostNotAllowed(FieldError):
    """A redirect to a plain URL on a host ``allowed_hosts`` does not list:
    a trick, or the site's own host missing from the setting."""

    def __init__(self, message: object, host: str) -> None:
        super().__init__(message)
        self.host = host


# Percent-encoded characters no path ever needs encoded (letters, digits,
# "-._~"), and encoded separators: written so, a path slips past a proxy's
# rules (``/%69nternal`` is ``/internal`` to the app, not to nginx).
_DISGUISED = re.compile(r"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DEde]|5[CcFf]|7[Ee]|2[Ff])")


def forward_target(value: str, prefixes: tuple[str, ...] = ()) -> tuple[str, str]:
    """``(PATH_INFO, QUERY_STRING)`` for a ``forward`` value; raises :class:`FieldError`.

    The path is percent-decoded the way a server decodes a request line, and
    it must not name a Klaviyo action: forwarding into one would submit twice.
    Craft writes action routes without a leading slash
    (``commerce/cart/update-cart``): such a route is the application's own
    path, relative to its root, as ``PATH_INFO`` is.

    The request that reaches the app this way never passed the front
    proxy's path rules, so a target is refused when it is written to look
    like another path than it is: letters or separators percent-encoded, or
    ``.``/``..`` segments. With ``prefixes`` (the site's
    ``forward_prefixes``) it must also lie under one of them.
    """
    value = _check_characters(value)
    if not value.startswith("/") and _plainly_relative(value):
        value = "/" + value
    if not _is_same_site_path(value):
        raise FieldError(msg("Forward to a path on this site, starting with /."))
    path, _, query = value.partition("?")
    path = path.split("#", 1)[0]
    if _DISGUISED.search(path) or any(segment in (".", "..")
                                      for segment in unquote(path).split("/")):
        raise FieldError(msg("Forward to a plainly written path of this site."))
    path_info = unquote_to_bytes(path).decode("latin-1")
    if path_info in ACTION_PATHS:
        raise FieldError(msg("Forward to a page of the site, not to another Klaviyo action."))
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path_info):
        raise FieldError(msg("The address contains characters that are not allowed."))
    if prefixes and not any(_under(path_info, prefix) for prefix in prefixes):
        raise FieldError(msg("Forwarding to this page is not allowed."))
    return path_info, query.split("#", 1)[0]


def _under(path: str, prefix: str) -> bool:
    """``/commerce/cart`` is under ``/commerce/`` and ``/commerce``, never
    under ``/comm`` (prefixes match whole segments)."""
    return path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")


def same_origin_referer(referer: str | None, host_url: str) -> str | None:
    """The Referer if it is a page of this very site (scheme, host and port)."""
    if not referer:
        return None
    try:
        referer = _check_characters(referer)
    except FieldError:
        return None
    parts, own = split_url(referer), split_url(host_url)
    if parts is None or own is None:
        return None
    if parts.scheme == own.scheme and split_host(parts.netloc) == split_host(own.netloc):
        return referer
    return None
