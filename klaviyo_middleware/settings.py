"""Checking configuration once, at start-up (the README's "Configuration").

Every option is checked when the middleware is built, so a typo fails the
deployment with a clear message instead of the first visitor's request.
Messages never repeat the API key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import phonenumbers

from klaviyo_middleware.delivery.spool.store import DURABILITY, ENV_SPOOL_PATH, default_spool_path
from klaviyo_middleware.delivery.spool.worker import WorkerOptions
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.account import check_api_key, check_api_url, check_revision
from klaviyo_middleware.klaviyo.client import (
    DEFAULT_API_URL,
    DEFAULT_REVISION,
    DEFAULT_TIMEOUT,
    ENV_API_KEY,
    ENV_API_URL,
    ENV_REVISION,
)
from klaviyo_middleware.web.body import BodyLimits
from klaviyo_middleware.web.security import parse_rate
from klaviyo_middleware.web.validation import SMS_CONSENT_MODES

DELIVERIES = ("spool", "sync", "celery")
ENV_BROKER_URL = "KLAVIYO_BROKER_URL"


@dataclass(frozen=True)
class Settings:
    api_key: str
    api_url: str
    revision: str
    delivery: str
    allowed_hosts: tuple[str, ...]
    secret: str | None
    action_field: bool
    phone_region: str | None
    custom_source: str | None
    event_prefix: str
    sms_consent: str
    timeout: tuple[float, float]
    sync_retry_budget: float
    limits: BodyLimits
    spool_path: str
    spool_durability: str
    spool_max_size: int
    worker: WorkerOptions
    allow_cross_site: bool
    csrf_max_age: float
    honeypot: str | None
    client_rate_limit: tuple[int, float] | None
    trusted_proxies: int
    max_lists: int
    max_properties: int
    log_personal_data: bool
    broker_url: str | None

    def __repr__(self) -> str:
        return f"<Settings api_url={self.api_url!r} delivery={self.delivery!r}>"


def build_settings(
    *,
    api_key: str | None,
    api_url: str | None,
    revision: str | None,
    delivery: str,
    allowed_hosts: str | Iterable[str],
    secret: str | None,
    action_field: bool,
    phone_region: str | None,
    custom_source: str | None,
    event_prefix: str | None,
    sms_consent: str,
    timeout: float | tuple[float, float] | None,
    sync_retry_budget: float,
    max_body_size: int,
    max_fields: int,
    max_depth: int,
    spool_path: str | os.PathLike[str] | None,
    spool_durability: str,
    spool_max_size: int,
    worker_threads: int,
    retry_max_age: float,
    rate_limit_share: float,
    allow_cross_site: bool,
    csrf_max_age: float,
    honeypot: str | None,
    client_rate_limit: str | None,
    trusted_proxies: int,
    max_lists: int,
    max_properties: int,
    max_string_length: int,
    log_personal_data: bool,
    broker_url: str | None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    env = os.environ if environ is None else environ
    raw_key = api_key or env.get(ENV_API_KEY)
    return Settings(
        # With Celery only the workers talk to Klaviyo: web nodes need no key.
        api_key="" if delivery == "celery" and not raw_key else check_api_key(raw_key),
        api_url=check_api_url(api_url or env.get(ENV_API_URL) or DEFAULT_API_URL),
        revision=check_revision(revision or env.get(ENV_REVISION) or DEFAULT_REVISION),
        delivery=_choice("delivery", delivery, DELIVERIES),
        allowed_hosts=split_list(allowed_hosts),
        secret=_secret(secret),
        action_field=_bool("action_field", action_field),
        phone_region=_phone_region(phone_region),
        custom_source=custom_source or None,
        event_prefix=_event_prefix(event_prefix),
        sms_consent=_choice("sms_consent", sms_consent, SMS_CONSENT_MODES),
        timeout=_timeout(timeout),
        sync_retry_budget=_non_negative("sync_retry_budget", sync_retry_budget),
        limits=BodyLimits(
            max_body_size=_positive_int("max_body_size", max_body_size),
            max_fields=_positive_int("max_fields", max_fields),
            max_depth=_positive_int("max_depth", max_depth),
            max_string_length=_positive_int("max_string_length", max_string_length),
        ),
        spool_path=str(spool_path or env.get(ENV_SPOOL_PATH) or default_spool_path()),
        spool_durability=_choice("spool_durability", spool_durability, tuple(DURABILITY)),
        spool_max_size=_positive_int("spool_max_size", spool_max_size),
        worker=WorkerOptions(
            threads=_positive_int("worker_threads", worker_threads),
            max_age=_non_negative("retry_max_age", retry_max_age),
            rate_share=_share("rate_limit_share", rate_limit_share),
        ),
        allow_cross_site=_bool("allow_cross_site", allow_cross_site),
        csrf_max_age=_non_negative("csrf_max_age", csrf_max_age),
        honeypot=honeypot or None,
        client_rate_limit=_client_rate(client_rate_limit),
        trusted_proxies=_count("trusted_proxies", trusted_proxies),
        max_lists=_positive_int("max_lists", max_lists),
        max_properties=_positive_int("max_properties", max_properties),
        log_personal_data=_bool("log_personal_data", log_personal_data),
        broker_url=broker_url or env.get(ENV_BROKER_URL) or None,
    )


def split_list(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a b, c"`` or ``["a", "b"]`` → ``("a", "b", "c")``."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part for part in re.split(r"[\s,]+", value) if part)
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(f"allowed_hosts must hold host names, not {item!r}")
    return tuple(item.strip() for item in items if item.strip())


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigurationError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


def _secret(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError("secret must be a string")
    if len(value) < 16:
        raise ConfigurationError("secret must be at least 16 characters long")
    return value


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def _event_prefix(value: str | None) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 64 or any(ord(c) < 32 for c in value):
        raise ConfigurationError(
            f"event_prefix must be short text such as 'Website: ', got {value!r}")
    return value


def _phone_region(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    region = value.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigurationError(
            f"phone_region must be a two-letter region code such as 'US' or 'GB', got {value!r}"
        )
    return region


def _timeout(value: float | tuple[float, float] | None) -> tuple[float, float]:
    if value is None:
        return DEFAULT_TIMEOUT
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or not all(
        isinstance(part, (int, float)) and not isinstance(part, bool) and part > 0
        for part in pair
    ):
        raise ConfigurationError(
            f"timeout must be seconds > 0 or a (connect, read) pair, got {value!r}"
        )
    return float(pair[0]), float(pair[1])


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(f"{name} must be a whole number above 0, got {value!r}")
    return value


def _non_negative(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{name} must be a number of seconds ≥ 0, got {value!r}")
    return float(value)


def _share(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise ConfigurationError(f"{name} must be a fraction above 0 and at most 1, got {value!r}")
    return float(value)


def _client_rate(value: str | None) -> tuple[int, float] | None:
    if value is None or value == "":
        return None
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise ConfigurationError(f"client_rate_limit: {exc}") from None


def _count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{name} must be a whole number ≥ 0, got {value!r}")
    return value
