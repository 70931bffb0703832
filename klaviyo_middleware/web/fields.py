"""Validators for single form fields, each returning the clean value or raising.

They are small on purpose: well-kept libraries do the real work
(email-validator for addresses, phonenumbers for E.164), and every message
is written for the visitor who has to fix the field.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from klaviyo_middleware.i18n.message import msg

# Klaviyo list ids are short alphanumeric strings ("Y6nRLr"); anything else
# would end up in a URL path, so the pattern is deliberately strict.
_LIST_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")
_TRUE = frozenset({"1", "true", "on", "yes", "y"})
_FALSE = frozenset({"0", "false", "off", "no", "n", ""})

# Klaviyo's limit for metric names.
MAX_EVENT_NAME = 127
# Event values are money or counts: a quadrillion is past any real order, and
# the bound keeps huge exponents ("1e1000000") from costing any arithmetic.
MAX_NUMBER = 10**15
# "-123456789012345.123456789" and then some; longer text is not a number a
# visitor typed.
_MAX_NUMBER_TEXT = 40


class FieldError(ValueError):
    """A value the visitor must correct; the message is shown to them."""


def blank(value: Any) -> bool:
    """Nothing to send: absent, or only white space. Empty optional fields
    are left out, never sent as "" (which would wipe what Klaviyo knows)."""
    return value is None or (isinstance(value, str) and not value.strip())


def text(value: Any) -> str:
    """A form value as stripped text; numbers from JSON bodies are accepted."""
    if isinstance(value, bool) or value is None:
        raise FieldError(msg("Enter text."))
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise FieldError(msg("Enter text, not a list or group of values."))
    if any(ord(char) < 32 and char not in "\t\r\n" for char in value):
        raise FieldError(msg("Remove the control characters."))
    return value.strip()


def email(value: Any) -> str:
    raw = text(value)
    try:
        # Syntax only: a DNS look-up would make the visitor wait on the network.
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError:
        raise FieldError(msg("Enter a valid email address.")) from None


def phone_number(value: Any, region: str | None) -> str:
    raw = text(value)
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise FieldError(_phone_message(region)) from None
    if not phonenumbers.is_valid_number(parsed):
        raise FieldError(_phone_message(region))
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def _phone_message(region: str | None) -> str:
    if region is None:
        return msg("Enter a valid phone number in international format, e.g. +44 20 7946 0958.")
    return msg("Enter a valid phone number.")


def number(value: Any) -> int | float:
    """A finite number below :data:`MAX_NUMBER`, from JSON or a form string like ``"9.99"``.

    The size is checked on the decimal's exponent before anything is
    computed with it: turning ``"1e1000000"`` into an ``int`` would hold the
    interpreter for many seconds.
    """
    if isinstance(value, bool):
        raise FieldError(msg("Enter a number."))
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(msg("Enter a number."))
        if abs(value) >= MAX_NUMBER:
            raise FieldError(_too_large())
        return value
    raw = text(value)
    if len(raw) > _MAX_NUMBER_TEXT:
        raise FieldError(_too_large())
    try:
        parsed = Decimal(raw)
    except InvalidOperation:
        raise FieldError(msg("Enter a number.")) from None
    if not parsed.is_finite():
        raise FieldError(msg("Enter a number."))
    if parsed and parsed.adjusted() >= 15:
        raise FieldError(_too_large())
    if parsed and parsed.adjusted() < -30:
        # Far below a cent of anything: zero, without computing 10**-huge.
        return 0
    return int(parsed) if parsed == parsed.to_integral_value() else float(parsed)


def _too_large() -> str:
    return msg("Enter a smaller number.")


def currency(value: Any) -> str:
    raw = text(value)
    if not _CURRENCY.match(raw):
        raise FieldError(msg("Enter a three-letter currency code, e.g. USD."))
    return raw.upper()


def list_id(value: Any) -> str:
    raw = text(value)
    if not _LIST_ID.match(raw):
        raise FieldError(msg("Unknown list."))
    return raw


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raw = text(value).lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise FieldError(msg("Choose yes or no."))


def event_name(value: Any) -> str:
    raw = "" if value is None else text(value)
    if not raw:
        raise FieldError(msg("Name the event."))
    if len(raw) > MAX_EVENT_NAME:
        raise FieldError(msg("Use at most {count} characters.", count=MAX_EVENT_NAME))
    return raw


def url(value: Any) -> str:
    raw = text(value)
    if not re.match(r"^https?://[^\s/]+", raw, re.IGNORECASE):
        raise FieldError(msg("Enter a web address starting with https://."))
    return raw
