"""What every command shares: a one-line failure, a person named on the command line."""

from __future__ import annotations

import sys

from klaviyo_middleware.redact import redact


def fail(message: str, code: int = 2) -> int:
    """A mistake the user can fix: one line on stderr, no traceback; the exit code."""
    print(f"klaviyo-middleware: {message}", file=sys.stderr)
    return code


def requeued(count: int, relist: tuple[str, str] | None) -> str:
    """What ``retry`` did, in one line (both backends say it alike)."""
    moved = f" sent to list {relist[1]} instead of {relist[0]}" if relist else ""
    return f"re-queued {count} submission(s){moved}"


def person(text: str) -> dict[str, str]:
    """``forget``'s argument, normalised as the form fields were: an email
    address or an E.164 phone number. Raises ``ValueError``."""
    from klaviyo_middleware.web import fields

    try:
        if "@" in text:
            return {"email": fields.email(text)}
        return {"phone_number": fields.phone_number(text, None)}
    except fields.FieldError as exc:
        raise ValueError(f"{redact(text)}: {exc}") from None
