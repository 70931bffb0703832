"""The middleware's options, declared once, and checked once, at start-up
(docs/configuration.md).

:data:`OPTIONS` is the table: every option the middleware takes as a
keyword and PasteDeploy as an ini key, with its default, environment
variable, check and documentation (see :mod:`klaviyo_middleware.option`).
The account's options are declared in :mod:`klaviyo_middleware.klaviyo.account`
because Celery workers read them too. Options that take Python callables
(hooks, loaders) cannot come from an ini file and are documented on
:class:`~klaviyo_middleware.KlaviyoMiddleware` itself.

Every option is checked when the middleware is built, so a typo fails the
deployment with a clear message instead of the first visitor's request.
Messages never repeat the API key.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import phonenumbers

from klaviyo_middleware import option
from klaviyo_middleware.delivery.celery.config import ENV_BROKER_URL
from klaviyo_middleware.delivery.retention import DEAD_LETTER_MAX_AGE
from klaviyo_middleware.delivery.spool.sender import SenderOptions
from klaviyo_middleware.delivery.spool.store import DURABILITY, ENV_SPOOL_PATH, default_spool_path
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.account import (
    API_KEY,
    API_URL,
    RATE_LIMIT_SHARE,
    RETRY_MAX_AGE,
    REVISION,
)
from klaviyo_middleware.klaviyo.client import DEFAULT_TIMEOUT
from klaviyo_middleware.option import Option, split_list
from klaviyo_middleware.web.body import BodyLimits
from klaviyo_middleware.web.security import (
    DEFAULT_CLIENT_RATE,
    DEFAULT_IPV6_PREFIX,
    ClientRate,
    parse_rate,
)
from klaviyo_middleware.web.validation import SMS_CONSENT_MODES

DELIVERIES = ("spool", "sync", "celery")


def _hosts(name: str, value: object) -> tuple[str, ...]:
    try:
        return split_list(value)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None
    except TypeError:
        raise ConfigurationError(f"{name} must be host names, got {value!r}") from None


def _prefixes(name: str, value: object) -> tuple[str, ...]:
    prefixes = _hosts(name, value)
    for prefix in prefixes:
        if not prefix.startswith("/") or prefix.startswith("//"):
            raise ConfigurationError(f"{name} are paths of the app such as '/commerce/', "
                                     f"got {prefix!r}")
    return prefixes


def _secret(name: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string")
    if len(value) < 16:
        raise ConfigurationError(f"{name} must be at least 16 characters long")
    return value


def _event_prefix(name: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 64 or any(ord(c) < 32 for c in value):
        raise ConfigurationError(
            f"{name} must be short text such as 'Website: ', got {value!r}")
    return value


def _phone_region(name: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    region = value.upper() if isinstance(value, str) else ""
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigurationError(
            f"{name} must be a two-letter region code such as 'US' or 'GB', got {value!r}"
        )
    return region


def _timeout(name: str, value: object) -> tuple[float, float]:
    pair = (value, value) if isinstance(value, (int, float)) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(
        isinstance(part, (int, float)) and not isinstance(part, bool) and 0 < part < 1e6
        for part in pair
    ):
        raise ConfigurationError(
            f"{name} must be seconds > 0 or a (connect, read) pair, got {value!r}"
        )
    return float(pair[0]), float(pair[1])


def _timeout_text(name: str, value: str) -> float | tuple[float, float]:
    parts = split_list(value)
    if len(parts) == 2:
        return option.as_float(name, parts[0]), option.as_float(name, parts[1])
    return option.as_float(name, value)


def _client_rate(name: str, value: object) -> ClientRate | None:
    if value is None or value == "":
        return DEFAULT_CLIENT_RATE
    if isinstance(value, str) and value.strip().lower() in ("off", "none", "false", "0"):
        return None
    try:
        return ClientRate(*parse_rate(str(value)))
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}; or 'off'") from None


def _ipv6_prefix(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        raise ConfigurationError(f"{name} must be a prefix length from 1 to 128, got {value!r}")
    return value


def _languages(name: str, value: object) -> tuple[str, ...] | None:
    if value is None or value == "" or value == ():
        return None
    try:
        tags = split_list(value)  # type: ignore[arg-type]
    except (ConfigurationError, TypeError):
        raise ConfigurationError(
            f"{name} must be language tags such as 'de fr en', got {value!r}") from None
    # Which tags have catalogs is checked where the catalogs are read
    # (i18n.catalogs.Languages), when the middleware is built.
    return tags or None


def _spool_path(name: str, value: object) -> str:
    if value is None or value == "":
        return str(default_spool_path())
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigurationError(f"{name} must be a file path, got {value!r}")
    return os.fspath(value)


# The table, in the order the middleware documents its keywords.
DELIVERY: Option[str] = Option(
    "delivery", "spool", option.choice(*DELIVERIES),
    help='``"spool"`` commits each submission to a local SQLite spool and delivers '
         'in the background; ``"sync"`` sends before answering the visitor (tests, '
         'tiny sites); ``"celery"`` enqueues a task for Celery workers.')
ALLOWED_HOSTS: Option[str | Iterable[str]] = Option(
    "allowed_hosts", (), _hosts, option.as_list,
    help='hosts that absolute ``redirect`` targets may use (``"shop.example.com"``, '
         '``".example.com"`` for subdomains too).')
FORWARD_PREFIXES: Option[str | Iterable[str]] = Option(
    "forward_prefixes", (), _prefixes, option.as_list,
    help='app paths that ``forward`` targets must lie under (``"/commerce/ '
         '/signup"``); empty: any path of the app that is not a Klaviyo action.')
SECRET: Option[str | None] = Option(
    "secret", None, _secret,
    help="when set, ``redirect`` values must be signed with "
         ":func:`klaviyo_middleware.sign_redirect` (16 characters or more).")
ACTION_FIELD: Option[bool] = Option(
    "action_field", False, option.boolean, option.as_bool,
    help="also honour a hidden ``action`` field posted to any path, in an "
         "urlencoded, multipart or JSON body (Craft's way of posting forms to the "
         "current page).", craft=True)
PHONE_REGION: Option[str | None] = Option(
    "phone_region", None, _phone_region,
    help='region for phone numbers written without ``+`` (e.g. ``"US"``); '
         "without it they must be international.")
CUSTOM_SOURCE: Option[str | None] = Option(
    "custom_source", None, option.optional_text,
    help="stored on Klaviyo's consent record of subscriptions.")
EVENT_PREFIX: Option[str | None] = Option(
    "event_prefix", None, _event_prefix,
    help='put in front of every metric name (``"Website: "``).')
SMS_CONSENT: Option[str] = Option(
    "sms_consent", "form", option.choice(*SMS_CONSENT_MODES),
    help='``"form"`` subscribes a phone number to SMS when it subscribes alone or '
         'the form posts a true ``sms_consent``; ``"with_phone"`` whenever a '
         "subscribing form carries a phone number, as today's Craft plugin does. "
         "SMS consent carries legal duties: choose it knowingly.", craft="with_phone")
TIMEOUT: Option[float | tuple[float, float]] = Option(
    "timeout", DEFAULT_TIMEOUT, _timeout, _timeout_text,
    help="seconds for Klaviyo calls, or a ``(connect, read)`` pair "
         '(``"5 15"`` in an ini file).')
SYNC_RETRY_BUDGET: Option[float] = Option(
    # Long enough to ride out a brief Klaviyo hiccup, short enough that a
    # visitor is not left staring at a spinner.
    "sync_retry_budget", 5.0, option.seconds, option.as_float,
    help="seconds a synchronous delivery may spend on calls and retries before "
         "the visitor is asked to try again; the visitor waits at most this plus "
         "one read timeout.")
MAX_BODY_SIZE: Option[int] = Option(
    # Far bigger than any real form, far smaller than a profile's 100 KB.
    "max_body_size", 64 * 1024, option.positive_int, option.as_int,
    help="bytes; larger submissions are answered with 413 (a real form is a few KB; "
         "the bound makes a flood of padded junk expensive).")
MAX_FIELDS: Option[int] = Option(
    "max_fields", 1000, option.positive_int, option.as_int,
    help="form fields (or JSON values) in one submission.")
MAX_DEPTH: Option[int] = Option(
    # Klaviyo documents 10 levels of nesting for properties.
    "max_depth", 10, option.positive_int, option.as_int,
    help="nesting depth of bracketed names or JSON.")
SPOOL_PATH: Option[str | os.PathLike[str] | None] = Option(
    "spool_path", None, _spool_path, env=ENV_SPOOL_PATH,
    help="the spool file (processes of one site share it). Default "
         "``~/.cache/klaviyo_middleware/spool.sqlite3``.")
SPOOL_DURABILITY: Option[str] = Option(
    # "full" survives power loss; "normal" only process crashes, but is faster.
    "spool_durability", "full", option.choice(*DURABILITY),
    help='``"full"`` or ``"normal"`` (SQLite synchronous).')
SPOOL_MAX_SIZE: Option[int] = Option(
    "spool_max_size", 256 * 1024 * 1024, option.positive_int, option.as_int,
    help="bytes of submissions waiting for delivery; when full, visitors get 503 + "
         "Retry-After. Dead letters do not count: they have dead_letter_max_size.")
DEAD_LETTER_MAX_SIZE: Option[int] = Option(
    # Its own budget: junk Klaviyo refuses must never turn real visitors away.
    "dead_letter_max_size", 64 * 1024 * 1024, option.positive_int, option.as_int,
    help="bytes of dead letters the spool keeps; past it the oldest are deleted "
         "(logged, and counted in ``spool stats``), never a new submission refused.")
SENDER_THREADS: Option[int] = Option(
    "sender_threads", 2, option.positive_int, option.as_int,
    help="threads of the spool's sender in each process (formerly ``worker_threads``).")
ALLOW_CROSS_SITE: Option[bool] = Option(
    # Refuse form posts that a browser says come from another site (CSRF).
    "allow_cross_site", False, option.boolean, option.as_bool,
    help="accept posts whose ``Origin``, ``Sec-Fetch-Site`` or ``Referer`` shows "
         "another site (refused with 403 by default; ``allowed_hosts`` count as "
         "this site).")
CSRF_MAX_AGE: Option[float] = Option(
    "csrf_max_age", 24 * 3600.0, option.seconds, option.as_float,
    help="seconds a CSRF token stays valid.")
HONEYPOT: Option[str | None] = Option(
    "honeypot", None, option.optional_text,
    help="name of a hidden field humans leave empty; a submission that fills it "
         "gets the usual success answer and is not sent.")
CLIENT_RATE_LIMIT: Option[str | None] = Option(
    # On by default, but only for clients with a public address: a site
    # behind a proxy it has not told us about (trusted_proxies) sees every
    # visitor at the proxy's private address, and must never be throttled
    # as one client by surprise.
    "client_rate_limit", None, _client_rate,
    help='e.g. ``"10/minute"``: submissions per client (an IPv4 address, an IPv6 '
         "network) and process, for every address; more get 429 with ``Retry-After``. "
         "Unset: 120 a minute for clients with a public address only. ``\"off\"`` turns "
         "it off.")
CLIENT_IPV6_PREFIX: Option[int] = Option(
    "client_ipv6_prefix", DEFAULT_IPV6_PREFIX, _ipv6_prefix, option.as_int,
    help="IPv6 clients are counted by network of this prefix length (one "
         "subscriber usually holds a whole /64).")
TRUSTED_PROXIES: Option[int] = Option(
    "trusted_proxies", 0, option.count, option.as_int,
    help="how many proxies in front of the site append to ``X-Forwarded-For`` "
         "(0: use ``REMOTE_ADDR``).")
MAX_LISTS: Option[int] = Option(
    "max_lists", 10, option.positive_int, option.as_int,
    help="lists one submission may name.")
MAX_PROPERTIES: Option[int] = Option(
    "max_properties", 400, option.positive_int, option.as_int,
    help="custom profile or event properties per submission.")
MAX_STRING_LENGTH: Option[int] = Option(
    "max_string_length", 100_000, option.positive_int, option.as_int,
    help="characters in any one field (Klaviyo: 100 KB).")
LOG_PERSONAL_DATA: Option[bool] = Option(
    "log_personal_data", False, option.boolean, option.as_bool,
    help="show email addresses and phone numbers in log messages (masked by default).")
LANGUAGES: Option[str | Iterable[str] | None] = Option(
    "languages", None, _languages, option.as_list,
    help='languages the middleware\'s own pages and messages are offered in, '
         'chosen by the visitor\'s ``Accept-Language``; the first is used when none '
         'matches (``"de"`` alone: always German). Default: every language with a '
         "catalog, English first.")
LOCALE_DIR: Option[str | None] = Option(
    "locale_dir", None, option.optional_text,
    help="a directory of the site's own gettext catalogs "
         "(``<dir>/<lang>/LC_MESSAGES/klaviyo_middleware.mo``), searched before "
         "the shipped ones.")
CRAFT_COMPAT: Option[bool] = Option(
    # Off: our defaults are deliberately safer where they differ (SMS consent
    # needs a choice, a bad phone number is shown to the visitor, AJAX
    # answers are objects). docs/migrating-from-craft.md lists each.
    "craft_compat", False, option.boolean, option.as_bool, env="KLAVIYO_CRAFT_COMPAT",
    help="the Craft plugin's exact behaviour for a site moving from Craft: read "
         "hidden ``action`` fields, answer AJAX with the string ``\"success\"``, send "
         "the browser back to the posted page, give SMS consent with a phone "
         "number, leave out an invalid optional phone number.")
BROKER_URL: Option[str | None] = Option(
    "broker_url", None, option.optional_text, env=ENV_BROKER_URL,
    help='with ``delivery="celery"``, the Redis or RabbitMQ broker.')

OPTIONS: tuple[Option[Any], ...] = (
    API_KEY, API_URL, REVISION, DELIVERY, ALLOWED_HOSTS, FORWARD_PREFIXES, SECRET, ACTION_FIELD,
    PHONE_REGION, CUSTOM_SOURCE, EVENT_PREFIX, SMS_CONSENT, TIMEOUT, SYNC_RETRY_BUDGET,
    MAX_BODY_SIZE, MAX_FIELDS, MAX_DEPTH, SPOOL_PATH, SPOOL_DURABILITY, SPOOL_MAX_SIZE,
    DEAD_LETTER_MAX_SIZE,
    SENDER_THREADS, RETRY_MAX_AGE, RATE_LIMIT_SHARE, ALLOW_CROSS_SITE, CSRF_MAX_AGE,
    HONEYPOT, CLIENT_RATE_LIMIT, CLIENT_IPV6_PREFIX, TRUSTED_PROXIES, MAX_LISTS, MAX_PROPERTIES,
    MAX_STRING_LENGTH, LOG_PERSONAL_DATA, LANGUAGES, LOCALE_DIR, BROKER_URL,
    DEAD_LETTER_MAX_AGE, CRAFT_COMPAT,
)
BY_NAME: dict[str, Option[Any]] = {declared.name: declared for declared in OPTIONS}
# Options that had another name: the old one is still read, with a warning
# naming the release that stops reading it (Werkzeug's way with renames).
RENAMED: dict[str, tuple[str, str]] = {
    # The spool's background threads are its sender; a worker is Celery's
    # (docs/design.md, "Words with one meaning each").
    "worker_threads": (SENDER_THREADS.name, "0.3"),
}


def current_names(given: Mapping[str, Any], where: str = "",
                  stacklevel: int = 3) -> dict[str, Any]:
    """``given`` with each renamed option under its current name, warning
    once per old name used (a :class:`FutureWarning`: the person who must
    act edits a settings file, and Python shows these by default).

    ``where`` says where the old name was read (``"settings.KLAVIYO_MIDDLEWARE"``).
    """
    current: dict[str, Any] = {}
    for name, value in given.items():
        if name not in RENAMED:
            current[name] = value
            continue
        new, removal = RENAMED[name]
        if new in given:
            raise ConfigurationError(
                f"{where + ': ' if where else ''}{name!r} is the old name of {new!r}; "
                f"give {new!r} alone")
        warnings.warn(
            f"klaviyo_middleware: the option {name!r} is now {new!r}"
            f"{' (' + where + ')' if where else ''}; the old name stops working in "
            f"{removal}", FutureWarning, stacklevel=stacklevel)
        current[new] = value
    return current


@dataclass(frozen=True)
class Settings:
    """Every option of :data:`OPTIONS`, checked: one field each, same name."""

    api_key: str
    api_url: str
    revision: str
    delivery: str
    allowed_hosts: tuple[str, ...]
    forward_prefixes: tuple[str, ...]
    secret: str | None
    action_field: bool
    phone_region: str | None
    custom_source: str | None
    event_prefix: str
    sms_consent: str
    timeout: tuple[float, float]
    sync_retry_budget: float
    max_body_size: int
    max_fields: int
    max_depth: int
    spool_path: str
    spool_durability: str
    spool_max_size: int
    dead_letter_max_size: int
    sender_threads: int
    retry_max_age: float
    rate_limit_share: float
    allow_cross_site: bool
    csrf_max_age: float
    honeypot: str | None
    client_rate_limit: ClientRate | None
    client_ipv6_prefix: int
    trusted_proxies: int
    max_lists: int
    max_properties: int
    max_string_length: int
    log_personal_data: bool
    languages: tuple[str, ...] | None
    locale_dir: str | None
    broker_url: str | None
    dead_letter_max_age: float
    craft_compat: bool

    def __repr__(self) -> str:
        return f"<Settings api_url={self.api_url!r} delivery={self.delivery!r}>"

    @property
    def limits(self) -> BodyLimits:
        return BodyLimits(
            max_body_size=self.max_body_size,
            max_fields=self.max_fields,
            max_depth=self.max_depth,
            max_string_length=self.max_string_length,
        )

    @property
    def sender(self) -> SenderOptions:
        return SenderOptions(
            sender_threads=self.sender_threads,
            retry_max_age=self.retry_max_age,
            rate_limit_share=self.rate_limit_share,
            dead_letter_max_age=self.dead_letter_max_age,
        )


def build_settings(
    given: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """Check every option of :data:`OPTIONS`; ``given`` maps names to what the
    caller passed (absent or ``None``: the environment, then the default)."""
    unknown = set(given) - set(BY_NAME)
    if unknown:
        raise ConfigurationError(unknown_option_message(sorted(unknown)[0]))
    env = os.environ if environ is None else environ
    craft_compat = CRAFT_COMPAT.resolve(given.get(CRAFT_COMPAT.name), env)
    values = {
        declared.name: declared.resolve(given.get(declared.name), env, craft_compat)
        for declared in OPTIONS if declared is not API_KEY
    }
    raw_key = API_KEY.lookup(given.get("api_key"), env)
    # With Celery only the workers talk to Klaviyo: web nodes need no key.
    values["api_key"] = ("" if values["delivery"] == "celery" and not raw_key
                         else API_KEY.check(API_KEY.name, raw_key))
    return Settings(**values)


def unknown_option_message(name: str) -> str:
    # "Allowed-Hosts", "klaviyo.api_key", "KLAVIYO_SECRET": the option under
    # another spelling is the likeliest intent.
    plain = name.lower().replace("-", "_").replace(".", "_").removeprefix("klaviyo_")
    close = [plain] if plain in BY_NAME else difflib.get_close_matches(plain, BY_NAME, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(BY_NAME))}"
    return f"unknown klaviyo_middleware option {name!r}{hint}"


def options_doc(indent: str = "") -> str:
    """The ``:param:`` lines of every declared option, for docstrings."""
    return ("\n" + indent).join(declared.doc() for declared in OPTIONS)
