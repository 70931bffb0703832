"""The Klaviyo account a process delivers for: its key, URL and revision,
and how hard to deliver to it (how long to retry, how much of the account's
rate limits to use).

They are declared here, once, as :class:`~klaviyo_middleware.option.Option`
values, because two kinds of process read them: the middleware's settings
and the Celery workers' configuration, with the same checks and defaults.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from klaviyo_middleware import option
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.client import (
    DEFAULT_API_URL,
    DEFAULT_REVISION,
    ENV_API_KEY,
    ENV_API_URL,
    ENV_REVISION,
)
from klaviyo_middleware.option import Option

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
# What documentation and templates write where a key belongs: "pk_...",
# "pk_", "pk_xxxx", "<your key>", "pk_YOUR_KEY_HERE".
_PLACEHOLDER = re.compile(r"^[.xX*_-]*$|\.\.\.|[<>{}]|your|here|placeholder|changeme|example",
                          re.IGNORECASE)


def check_api_key(name: str, value: object) -> str:
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
    if not value.startswith("pk_"):
        raise ConfigurationError(
            "api_key is not a Klaviyo private API key: those start with 'pk_' (Klaviyo: "
            "Settings > API keys > Create Private API Key).")
    if _PLACEHOLDER.search(value[3:]):
        raise ConfigurationError(
            f"api_key is a placeholder ({value[:3]}{'…' if len(value) > 3 else ''}), not a "
            f"key: set {ENV_API_KEY} to a private API key from Klaviyo (Settings > API keys); "
            "without one, `klaviyo-middleware demo` runs on a fake Klaviyo.")
    return value


def check_api_url(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"api_url must be an http(s) URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"api_url must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def check_revision(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"revision must be a date like {DEFAULT_REVISION!r}")
    if not _REVISION.match(value):
        raise ConfigurationError(
            f"revision must be a Klaviyo API revision date like {DEFAULT_REVISION!r}, "
            f"got {value!r}"
        )
    return value




API_KEY: Option[str | None] = Option(
    "api_key", None, check_api_key, env=ENV_API_KEY,
    help="Klaviyo private API key (``pk_...``).")
API_URL: Option[str] = Option(
    "api_url", DEFAULT_API_URL, check_api_url, env=ENV_API_URL,
    help="Klaviyo's base URL (point it at a fake Klaviyo in tests).")
REVISION: Option[str] = Option(
    "revision", DEFAULT_REVISION, check_revision, env=ENV_REVISION,
    help="the Klaviyo API revision sent with every call.")
RETRY_MAX_AGE: Option[float] = Option(
    "retry_max_age", DEFAULT_RETRY_MAX_AGE, option.seconds, option.as_float,
    help="seconds a failing submission is retried before it goes to the dead letters.")
RATE_LIMIT_SHARE: Option[float] = Option(
    "rate_limit_share", DEFAULT_RATE_LIMIT_SHARE, option.share, option.as_float,
    help="share of Klaviyo's per-account rate limits used.")
