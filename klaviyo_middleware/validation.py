"""Turning form input into a :class:`~klaviyo_middleware.submission.Submission`.

Errors are collected per field (``{"email": ["Enter a valid email
address."]}``) so that a form can show every problem at once; nothing is sent
to Klaviyo for a submission with any error.

Empty optional fields are left out rather than sent as ``""``: Klaviyo
treats a present key as "set this", and an empty input on a form should never
wipe what Klaviyo already knows about the person.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import fields
from .fields import FieldError
from .paths import UPDATE_PROFILE, Action
from .redact import get_logger
from .submission import Event, Submission

log = get_logger(__name__)

Errors = dict[str, list[str]]

_PLAIN_ATTRIBUTES = ("first_name", "last_name", "title", "organization")
_LOCATION = ("address1", "address2", "city", "region", "country", "zip", "timezone")


EmailFilter = Callable[[str], "bool | str | None"]


@dataclass(frozen=True)
class ValidationOptions:
    phone_region: str | None = None
    custom_source: str | None = None
    max_lists: int = 10
    # Klaviyo's limit for event properties; the same cap serves profiles.
    max_properties: int = 400
    refuse_email: EmailFilter | None = None


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


def build_submission(
    action: Action,
    profile_fields: Mapping[str, Any],
    form: Mapping[str, Any],
    options: ValidationOptions,
) -> tuple[Submission | None, Errors]:
    """Validate and return ``(submission, {})`` or ``(None, errors)``."""
    collector = _Collector()
    profile = _profile(profile_fields, collector, options)
    lists: list[str] = []
    confirm = True
    event = None
    if action == UPDATE_PROFILE:
        lists = _lists(form, collector)
        if len(lists) > options.max_lists:
            collector.add("lists", f"Choose at most {options.max_lists} lists.")
        confirm = _confirm_opt_in(form, collector)
        event = _event(form, collector)
        if event is not None and len(event.properties) > options.max_properties:
            collector.add("event[extra]", f"Send at most {options.max_properties} properties.")
    if collector.errors:
        return None, collector.errors
    submission = Submission(
        action=action,
        profile=profile,
        lists=lists,
        confirm_opt_in=confirm,
        custom_source=options.custom_source,
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
    if raw_email is None or (isinstance(raw_email, str) and not raw_email.strip()):
        collector.add("email", "Enter your email address.")
    else:
        profile["email"] = collector.check("email", fields.email, raw_email)
        if profile["email"] and options.refuse_email is not None:
            try:
                verdict = options.refuse_email(profile["email"])
            except Exception:
                # A broken filter must not turn a sign-up into a 500.
                log.exception("klaviyo_middleware: refuse_email hook failed")
                verdict = None
            if verdict:
                collector.add("email", verdict if isinstance(verdict, str)
                              else "Use another email address.")

    def optional(name: str, validator: Callable[[Any], Any], target: str) -> None:
        value = values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return
        clean = collector.check(name, validator, value)
        if clean not in (None, ""):
            profile[target] = clean

    optional("id", fields.text, "external_id")
    for name in _PLAIN_ATTRIBUTES:
        optional(name, fields.text, name)
    optional("image", fields.url, "image")
    optional(
        "phone_number",
        lambda value: fields.phone_number(value, options.phone_region),
        "phone_number",
    )
    location: dict[str, Any] = {}
    for name in _LOCATION:
        value = values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
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
                collector.add("extra", f"Send at most {options.max_properties} properties.")
            elif extra:
                profile["properties"] = dict(extra)
        else:
            collector.add("extra", "Send custom properties as extra[NAME]=value.")
    return profile


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


def _confirm_opt_in(form: Mapping[str, Any], collector: _Collector) -> bool:
    for name in ("confirmOptIn", "subscribe"):
        if name in form:
            value = collector.check(name, fields.boolean, form[name])
            return bool(value) if value is not None else True
    return True


def _event(form: Mapping[str, Any], collector: _Collector) -> Event | None:
    raw = form.get("event")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        collector.add("event", "Send the event as event[name], event[extra][...] and so on.")
        return None
    if not raw:
        return None
    name = collector.check("event[name]", fields.event_name, raw.get("name"))
    event_id = raw.get("event_id")
    unique_id = ""
    if event_id is not None and not (isinstance(event_id, str) and not event_id.strip()):
        unique_id = collector.check("event[event_id]", fields.text, event_id) or ""
    value = None
    if raw.get("value") not in (None, ""):
        value = collector.check("event[value]", fields.number, raw["value"])
    currency = None
    if raw.get("value_currency") not in (None, ""):
        currency = collector.check("event[value_currency]", fields.currency, raw["value_currency"])
    properties: dict[str, Any] = {}
    extra = raw.get("extra")
    if isinstance(extra, dict):
        properties = dict(extra)
    elif extra is not None:
        collector.add("event[extra]", "Send event properties as event[extra][NAME]=value.")
    if name is None:
        return None
    return Event(
        name=name,
        unique_id=unique_id,
        properties=properties,
        value=value,
        value_currency=currency,
    )
