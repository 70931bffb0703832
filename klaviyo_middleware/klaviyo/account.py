"""The Klaviyo account a process delivers for: its key, URL and revision,
checked the same way wherever they are read — the middleware's settings and
the Celery workers' configuration alike — and the delivery defaults both
share (how hard to retry, how much of the account's rate limits to use).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.client import DEFAULT_REVISION, ENV_API_KEY

# Klaviyo outages rarely last hours; three days covers a long weekend.
DEFAULT_RETRY_MAX_AGE = 3 * 24 * 3600.0
# Klaviyo's limits are per account; leave headroom for other integrations.
DEFAULT_RATE_LIMIT_SHARE = 0.9
# Backoff between attempts of queued delivery: first and largest ceiling.
RETRY_BASE = 1.0
RETRY_CAP = 600.0

_REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
# Klaviyo's public keys (site ids) are six characters; sending one as a
# private key fails every call with 401, so catch it at start-up.
_PUBLIC_KEY = re.compile(r"^[A-Za-z0-9]{6}$")


def check_api_key(value: str | None) -> str:
    if not value or not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            f"A Klaviyo private API key is required: pass api_key=... or set {ENV_API_KEY}."
        )
    value = value.strip()
    if _PUBLIC_KEY.match(value):
        raise ConfigurationError(
            "api_key looks like a Klaviyo public key (site id); the middleware needs a "
            "private API key (it starts with 'pk_')."
        )
    if any(char.isspace() for char in value):
        raise ConfigurationError("api_key contains white space; check how it was copied.")
    return value


def check_api_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"api_url must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def check_revision(value: str) -> str:
    if not _REVISION.match(value):
        raise ConfigurationError(
            f"revision must be a Klaviyo API revision date like {DEFAULT_REVISION!r}, "
            f"got {value!r}"
        )
    return value


