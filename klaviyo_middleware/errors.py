"""Errors every layer may raise; they import nothing of the package.

One family, as django-anymail's ``exceptions.py``: :class:`ConfigurationError`
at start-up, and :class:`DeliveryError` for a submission that could not go
(yet) — :class:`~klaviyo_middleware.KlaviyoError` under it when Klaviyo
itself refused or failed, the base alone for a failure here (the spool or
the broker unavailable, a value JSON cannot carry, a bug caught in the loop).
"""

from __future__ import annotations

from typing import Any

# Klaviyo refusing the account's key (or its scopes), not a submission.
KEY_REFUSED_STATUSES = (401, 403)


class ConfigurationError(ValueError):
    """The middleware was configured in a way that cannot work (raised at
    start-up, never at a visitor's request)."""


class DeliveryError(Exception):
    """A submission could not be delivered, or not yet.

    ``transient`` says whether asking again later may work. The other
    fields are what a dead letter records: ``status`` and ``code`` (Klaviyo's,
    or ours such as ``"unserialisable"``), ``detail`` — kept for the record;
    ``str()`` stays free of it because it may echo personal data back —
    ``pointer`` (the JSON path at fault) and ``retry_after`` (seconds).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        detail: str | None = None,
        pointer: str | None = None,
        retry_after: float | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail
        self.pointer = pointer
        self.retry_after = retry_after
        self.transient = transient

    @property
    def key_refused(self) -> bool:
        """Klaviyo refused the account's key (401, 403), not this submission:
        delivery holds until the key is put right; nothing is dead-lettered."""
        return self.status in KEY_REFUSED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": str(self),
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            "pointer": self.pointer,
        }
