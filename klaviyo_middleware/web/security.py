"""Defences of a public form endpoint: cross-site posts, CSRF tokens, abuse limits.

A form that updates Klaviyo profiles and triggers opt-in emails is worth
abusing: another site can make its visitors post to it (CSRF, subscribing
them or, with the ``user`` mapping, changing the signed-in person's
profile), and a script can post thousands of strangers' addresses (opt-in
spam). See docs/security.md for the whole threat model.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import NamedTuple

from klaviyo_middleware.web.redirects import HostPolicy, split_host, split_url

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


# -- cross-site posts ---------------------------------------------------------


def cross_site_reason(headers: Mapping[str, str], host: str, hosts: HostPolicy) -> str | None:
    """Why a post looks cross-site, or ``None`` when it comes from this site.

    ``Origin`` decides when present (browsers send it on every POST), then
    ``Sec-Fetch-Site``, then ``Referer``; a request with none of them (a
    server-side client, an old browser) is not a browser-driven CSRF and
    passes. Only host names are compared, not schemes, so a site behind a
    TLS-terminating proxy is not refused by mistake.
    """
    own = _hostname(host)
    origin = headers.get("Origin")
    if origin is not None:
        if origin.strip().lower() == "null":
            return "the form was posted from an opaque origin"
        return None if _same_site(origin, own, hosts) else "the form was posted from another site"
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site.lower() in ("same-origin", "same-site", "none"):
            return None
        return "the form was posted from another site"
    referer = headers.get("Referer")
    if referer:
        return None if _same_site(referer, own, hosts) else "the form was posted from another site"
    return None


def _same_site(url: str, own: str, hosts: HostPolicy) -> bool:
    parts = split_url(url.strip())
    if parts is None or not parts.netloc or parts.hostname is None:
        return False
    return split_host(parts.netloc)[0] == own or hosts.allows(parts.netloc)


def _hostname(host: str) -> str:
    return split_host(host)[0]


# -- CSRF tokens ------------------------------------------------------------------


def csrf_token(secret: str, session: str, now: float | None = None) -> str:
    """A token for a hidden ``csrf_token`` field, bound to the visitor's session.

    ``session`` is anything stable for the visitor and unknown to others (a
    session id); the middleware checks it against ``csrf_session(environ)``.
    """
    issued = str(int(time.time() if now is None else now))
    return f"{issued}.{_csrf_digest(secret, session, issued)}"


def check_csrf_token(token: str, secret: str, session: str, max_age: float,
                     now: float | None = None) -> bool:
    issued, _, digest = token.partition(".")
    # A Unix time has 10 digits; a longer one is forged (and int() of a few
    # thousand digits raises).
    if not (len(issued) <= 12 and issued.isascii() and issued.isdigit()) or not digest:
        return False
    age = (time.time() if now is None else now) - int(issued)
    if not 0 <= age <= max_age:
        return False
    expected = _csrf_digest(secret, session, issued).encode("ascii")
    return hmac.compare_digest(digest.encode("utf-8"), expected)


def _csrf_digest(secret: str, session: str, issued: str) -> str:
    message = f"csrf\n{session}\n{issued}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


# -- per-client rate limit ------------------------------------------------------


class ClientRate(NamedTuple):
    """Submissions per client and process: ``limit`` per ``period`` seconds."""

    limit: int
    period: float
    # The default budget limits only clients whose address names them (a
    # public one): behind a local proxy or load balancer every visitor
    # arrives from its private address, and limiting that would limit the
    # whole site. A configured limit applies to every address.
    public_only: bool = False


# On unless a site turns it off: far above what a person posts, far below
# what a script filling the spool with junk would like.
DEFAULT_CLIENT_RATE = ClientRate(120, 60.0, public_only=True)
# IPv6 clients are counted by network: one subscriber line usually holds a
# whole /64 and may use any address in it.
DEFAULT_IPV6_PREFIX = 64


def parse_rate(value: str) -> tuple[int, float]:
    """``"10/minute"`` → ``(10, 60.0)``; raises ``ValueError``."""
    match = _RATE.match(value)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"expected a rate like '10/minute', got {value!r}")
    return int(match.group(1)), _PERIODS[match.group(2).lower()]


def client_address(environ: Mapping[str, object], trusted_proxies: int) -> str:
    """The client's IP: ``REMOTE_ADDR``, or the entry ``trusted_proxies`` hops
    back in ``X-Forwarded-For`` (only proxies you run may be trusted; a
    client can write anything in that header)."""
    remote = str(environ.get("REMOTE_ADDR") or "")
    if trusted_proxies <= 0:
        return remote
    forwarded = [part.strip() for part in str(environ.get("HTTP_X_FORWARDED_FOR") or "").split(",")
                 if part.strip()]
    if len(forwarded) >= trusted_proxies:
        return forwarded[-trusted_proxies]
    return forwarded[0] if forwarded else remote


def client_key(address: str, ipv6_prefix: int = DEFAULT_IPV6_PREFIX) -> str:
    """Who a rate limit counts: an IPv4 address as it is (written as
    ``::ffff:10.0.0.1`` too), an IPv6 address by its ``/ipv6_prefix``
    network; anything else (a name, a malformed header) as written."""
    ip = parse_ip(address)
    if ip is None:
        return address.strip()[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


def parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``REMOTE_ADDR`` or an ``X-Forwarded-For`` entry as an address: bare,
    ``[v6]``, ``[v6]:port``, ``v4:port``, with a zone id; an IPv4 address
    written as IPv6 (``::ffff:10.0.0.1``) as the IPv4 one; ``None`` otherwise."""
    text = address.strip()
    if len(text) > 64:
        return None
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public(address: str) -> bool:
    """Whether an address names one client on the internet (not a proxy's
    private, loopback or link-local address)."""
    ip = parse_ip(address)
    return ip is not None and ip.is_global


class ClientRateLimiter:
    """Sliding-window submission limit per client, in this process's memory.

    Memory is bounded: at most ``max_clients`` addresses are tracked, the
    least recently seen forgotten first.
    """

    def __init__(self, limit: int, period: float, max_clients: int = 100_000) -> None:
        self.limit = limit
        self.period = period
        self.max_clients = max_clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str, now: float | None = None) -> int:
        """0 and counts the submission if allowed, else whole seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.pop(client, None) or deque()
            while times and times[0] <= now - self.period:
                times.popleft()
            self._seen[client] = times
            if len(self._seen) > self.max_clients:
                self._seen.popitem(last=False)
            if len(times) >= self.limit:
                return max(1, math.ceil(times[0] + self.period - now))
            times.append(now)
            return 0
