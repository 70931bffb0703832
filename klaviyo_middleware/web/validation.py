"""Turning form input into a :class:`~klaviyo_middleware.model.submission.Submission`.

Errors are collected per field (``{"email": ["Enter a valid email
address."]}``) so that a form can show every problem at once; nothing is sent
to Klaviyo for a submission with any error.

Empty optional fields are left out rather than sent as ``""``: Klaviyo
treats a present key as "set this", and an empty input on a form should never
wipe what Klaviyo already knows about the person.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from klaviyo_middleware.i18n.message import msg
from klaviyo_middleware.model.submission import UPDATE_PROFILE, Event, Submission
from klaviyo_middleware.notices import warn_once
from klaviyo_middleware.redact import get_logger
from klaviyo_middleware.web import fields
from klaviyo_middleware.web.fields import FieldError
from klaviyo_middleware.web.mappings import LOCATION_FIELDS, PROFILE_FIELDS
from klaviyo_middleware.web.routes import Route

log = get_logger(__name__)

Errors = dict[str, list[str]]

_PLAIN_ATTRIBUTES = ("first_name", "last_name", "title", "organization")
# Keys under event[...] that are not custom properties; every other key is
# one (today's plugin: event[Topic]), as is everything under event[extra].
_EVENT_RESERVED = frozenset({"name", "event_id", "unique_id", "value", "value_currency",
                             "timestamp", "extra"})
# The plugin's bounds for event[timestamp]: older or further ahead is a typo.
_EARLIEST_EVENT = datetime(1990, 1, 1, tzinfo=timezone.utc)
_LATEST_EVENT_AHEAD = timedelta(days=365)
SMS_CONSENT_MODES = ("form", "with_phone")


EmailFilter = Callable[[str], "bool | str | None"]


@dataclass(frozen=True)
class ValidationOptions:
    phone_region: str | None = None
    custom_source: str | None = None
    max_lists: int = 10
    # Klaviyo's limit for event properties; the same cap serves profiles.
    max_properties: int = 400
    refuse_email: EmailFilter | None = None
    # Put in front of every metric name (the plugin's "event prefix").
    event_prefix: str = ""
    # "form": SMS consent only when a phone number subscribes alone or the
    # form posts a true sms_consent; "with_phone": whenever a subscribing
    # form carries a phone number (today's plugin).
    sms_consent: str = "form"
    # craft_compat: an invalid optional phone number is left out (with a
    # warning) and the email still goes, as plugin 7.3.1 does; by default it
    # is an error the visitor can fix.
    drop_invalid_phone: bool = False


class _Collector:
    """Runs validators and gathers their messages by field name."""

    def __init__(self) -> None:
        self.errors: Errors = {}

    def check(self, name: str, validator: Callable[[Any], Any], value: Any) -> Any:
        try:
            return validator(value)
        except FieldError as exc:
            self.add(name, str(exc))
            return None

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)


# Every top-level field a form may post (docs/forms.md); with the profile
# fields of the mappings. Others (CSRF tokens, a consent checkbox, fields
# for a forwarded action) are the site's own and pass unread.
FORM_FIELDS = frozenset({
    *PROFILE_FIELDS, "profile", "list", "lists", "subscribe", "useSubscribeEndpoint",
    "confirmOptIn", "sms_consent", "event", "klaviyoProfileMapping", "forward", "redirect",
    "action"})
# How many unknown names of one post are compared: a post of a thousand
# junk fields costs no more than one of fifty.
_MISSPELT_LOOKS = 50


def misspelt_fields(form: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, the field it is one typo from)`` for each unknown field that
    is close to a known one (``frist_name`` → ``first_name``)."""
    found = []
    unknown = (name for name in form if name not in FORM_FIELDS and len(name) <= 64)
    for name in itertools.islice(unknown, _MISSPELT_LOOKS):
        # difflib finds the candidate; one edit away (a letter wrong,
        # missing, extra, or two swapped) decides: "consent" (a site's own
        # checkbox) is not a typo of "sms_consent".
        for close in difflib.get_close_matches(name, FORM_FIELDS, n=3, cutoff=0.6):
            if _one_edit_apart(name.lower(), close.lower()):
                found.append((name, close))
                break
    return found


def _one_edit_apart(a: str, b: str) -> bool:
    if a == b:
        return True  # told apart by case alone ("Email")
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        differ = [index for index, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return len(differ) == 1 or (len(differ) == 2 and differ[1] == differ[0] + 1
                                    and a[differ[0]] == b[differ[1]]
                                    and a[differ[1]] == b[differ[0]])
    shorter, longer = sorted((a, b), key=len)
    return any(longer[:index] + longer[index + 1:] == shorter for index in range(len(longer)))


def build_submission(
    route: Route,
    profile_fields: Mapping[str, Any],
    form: Mapping[str, Any],
    options: ValidationOptions,
) -> tuple[Submission | None, Errors]:
    """Validate and return ``(submission, {})`` or ``(None, errors)``."""
    collector = _Collector()
    profile = _profile(profile_fields, collector, options)
    lists: list[str] = []
    confirm = route.subscribes_by_default
    event = None
    if route.action == UPDATE_PROFILE:
        lists = _lists(form, collector)
        if len(lists) > options.max_lists:
            collector.add("lists", msg("Choose at most {count} lists.", count=options.max_lists))
        confirm = _subscribes(form, collector, route.subscribes_by_default)
        event = _event(form, collector, options)
        if event is not None and len(event.properties) > options.max_properties:
            collector.add("event[extra]", msg("Send at most {count} properties.",
                                                 count=options.max_properties))
    subscribing = bool(lists) and confirm
    has_email = "email" in profile or "email" in collector.errors
    answer = _sms_consent(form, collector)
    # An explicit "no" (sms_consent=0) always wins; otherwise a phone number
    # subscribes when it is alone, when the form said yes, or when the site
    # chose "with_phone".
    sms = (subscribing and bool(profile.get("phone_number")) and answer is not False
           and (not has_email or options.sms_consent == "with_phone" or bool(answer)))
    if not has_email and not sms and "phone_number" not in collector.errors:
        # A phone number alone may subscribe (SMS); everything else needs
        # the address that identifies the person. (A form whose phone
        # number was wrong is told that alone: it may have no email field.)
        collector.add("email", msg("Enter your email address."))
    if collector.errors:
        return None, collector.errors
    submission = Submission(
        action=route.action,
        profile=profile,
        lists=lists,
        confirm_opt_in=confirm,
        custom_source=options.custom_source,
        sms_consent=sms,
    )
    if event is not None:
        # Without an event_id, the submission id makes retries idempotent:
        # Klaviyo keeps only the first event with a given unique_id.
        event.unique_id = event.unique_id or submission.id
        submission.event = event
    return submission, {}


def _profile(
    values: Mapping[str, Any], collector: _Collector, options: ValidationOptions
) -> dict[str, Any]:
    profile: dict[str, Any] = {}
    raw_email = values.get("email")
    if not fields.blank(raw_email):
        profile["email"] = collector.check("email", fields.email, raw_email)
        if profile["email"] is None:
            del profile["email"]
        elif options.refuse_email is not None:
            try:
                verdict = options.refuse_email(profile["email"])
            except Exception:
                # A broken filter must not turn a sign-up into a 500.
                log.exception("klaviyo_middleware: refuse_email hook failed")
                verdict = None
            if verdict:
                collector.add("email", verdict if isinstance(verdict, str)
                              else msg("Use another email address."))

    def optional(name: str, validator: Callable[[Any], Any], target: str) -> None:
        value = values.get(name)
        if fields.blank(value):
            return
        clean = collector.check(name, validator, value)
        if clean not in (None, ""):
            profile[target] = clean

    optional("id", fields.text, "external_id")
    for name in _PLAIN_ATTRIBUTES:
        optional(name, fields.text, name)
    optional("image", fields.url, "image")
    _phone(values.get("phone_number"), profile, collector, options)
    location: dict[str, Any] = {}
    for name in LOCATION_FIELDS:
        value = values.get(name)
        if fields.blank(value):
            continue
        clean = collector.check(name, fields.text, value)
        if clean:
            location[name] = clean
    if location:
        profile["location"] = location
    extra = values.get("extra")
    if extra is not None:
        if isinstance(extra, dict):
            if len(extra) > options.max_properties:
                collector.add("extra", msg("Send at most {count} properties.",
                                               count=options.max_properties))
            elif extra:
                profile["properties"] = dict(extra)
        else:
            collector.add("extra", msg("Send custom properties as extra[NAME]=value."))
    return profile


def _phone(value: Any, profile: dict[str, Any], collector: _Collector,
           options: ValidationOptions) -> None:
    if fields.blank(value):
        return
    try:
        profile["phone_number"] = fields.phone_number(value, options.phone_region)
    except FieldError as exc:
        if options.drop_invalid_phone and "email" in profile:
            log.warning("klaviyo_middleware: a phone number that is not valid was left out "
                        "(craft_compat); the email is sent without it")
        else:
            collector.add("phone_number", str(exc))


def _lists(form: Mapping[str, Any], collector: _Collector) -> list[str]:
    candidates: list[Any] = []
    for name in ("list", "lists"):
        value = form.get(name)
        if isinstance(value, list):
            candidates.extend(value)
        elif isinstance(value, dict):
            candidates.extend(value.values())
        elif value is not None:
            candidates.append(value)
    lists: list[str] = []
    for candidate in candidates:
        if isinstance(candidate, str) and not candidate.strip():
            continue
        clean = collector.check("lists", fields.list_id, candidate)
        if clean is not None and clean not in lists:
            lists.append(clean)
    return lists


def _subscribes(form: Mapping[str, Any], collector: _Collector, default: bool) -> bool:
    """Whether the lists are subscribed to (consent) or only joined.

    Each era's field keeps its era's meaning (docs/migrating-from-craft.md):
    ``subscribe`` (today) says it outright; ``useSubscribeEndpoint`` (plugin
    4.0.5-6.x) chose Klaviyo's subscribe call, which honours the list's
    opt-in setting, over plain membership; the first era's ``confirmOptIn``
    subscribed either way -- ``0`` only skipped the confirmation email.
    """
    for name in ("subscribe", "useSubscribeEndpoint"):
        if name in form:
            value = collector.check(name, fields.boolean, form[name])
            return bool(value) if value is not None else default
    if "confirmOptIn" in form:
        if _falsy(form["confirmOptIn"]):
            warn_once(log, ("confirmOptIn",),
                      "klaviyo_middleware: confirmOptIn=0 subscribes the person, as it did in "
                      "the Craft plugin's first era, where it only skipped Klaviyo's "
                      "confirmation email; Klaviyo's current API has no such switch: the "
                      "list's own opt-in setting decides whether a confirmation is sent")
        return True
    return default


def _falsy(value: Any) -> bool:
    try:
        return not fields.boolean(value)
    except FieldError:
        return False


def _sms_consent(form: Mapping[str, Any], collector: _Collector) -> bool | None:
    """The form's answer to SMS consent: ``None`` when it asked nothing."""
    if form.get("sms_consent") in (None, ""):
        return None
    value = collector.check("sms_consent", fields.boolean, form["sms_consent"])
    return None if value is None else bool(value)


def _event(form: Mapping[str, Any], collector: _Collector,
           options: ValidationOptions) -> Event | None:
    raw = form.get("event")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        collector.add("event", msg("Send the event as event[name], event[extra][...] and so on."))
        return None
    if not raw:
        return None
    raw_name = raw.get("name")
    if options.event_prefix and isinstance(raw_name, str) and raw_name.strip():
        raw_name = options.event_prefix + raw_name.strip()
    name = collector.check("event[name]", fields.event_name, raw_name)
    unique_id = ""
    for key in ("event_id", "unique_id"):
        event_id = raw.get(key)
        if not fields.blank(event_id):
            unique_id = collector.check(f"event[{key}]", fields.text, event_id) or ""
            break
    # Value and currency are hidden fields the visitor cannot correct: one
    # that is not usable is left out with a warning (as the plugin drops it),
    # never a reason to lose the whole submission.
    value = _optional_or_dropped(raw.get("value"), fields.number, "event[value]")
    currency = _optional_or_dropped(raw.get("value_currency"), fields.currency,
                                    "event[value_currency]")
    # Today's plugin: any other key under event[...] is a property;
    # event[extra][...] (the first era's) wins over a key of the same name.
    properties: dict[str, Any] = {
        key: item for key, item in raw.items() if key not in _EVENT_RESERVED}
    extra = raw.get("extra")
    if isinstance(extra, dict):
        properties.update(extra)
    elif extra is not None:
        collector.add("event[extra]", msg("Send event properties as event[extra][NAME]=value."))
    if name is None:
        return None
    return Event(
        name=name,
        unique_id=unique_id,
        properties=properties,
        value=value,
        value_currency=currency,
        time=_event_time(raw.get("timestamp")),
    )


def _optional_or_dropped(value: Any, validator: Callable[[Any], Any], name: str) -> Any:
    if value in (None, ""):
        return None
    try:
        return validator(value)
    except FieldError:
        log.warning("klaviyo_middleware: %s is not usable and was left out of the event", name)
        return None


def _event_time(value: Any) -> str | None:
    """``event[timestamp]`` as an ISO 8601 UTC time, or ``None`` for "when
    the form was submitted" — also for a value that is not a usable time, as
    the plugin does (logged, since the form may have a bug)."""
    if fields.blank(value):
        return None
    when = None
    if isinstance(value, str) and len(value) <= 64:
        text = value.strip()
        # Python 3.10's fromisoformat does not read a trailing "Z".
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            when = None
    if when is not None:
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        now = datetime.now(timezone.utc)
        if _EARLIEST_EVENT <= when <= now + _LATEST_EVENT_AHEAD:
            return when.astimezone(timezone.utc).isoformat(timespec="seconds")
    log.warning("klaviyo_middleware: event[timestamp] is not a usable ISO 8601 time; "
                "the submission time is used instead")
    return None
