"""Request checks the way Klaviyo makes them: headers, JSON:API shape, attributes.

Each check raises :class:`ApiError`, which becomes a JSON:API error body
with the same ``status``, ``code`` and ``source.pointer`` Klaviyo would use,
so clients are tested against realistic refusals. Attribute names are
closed: anything Klaviyo does not know is refused, as Klaviyo refuses it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

PROFILE_ATTRIBUTES = frozenset({
    "email", "phone_number", "external_id", "anonymous_id", "_kx", "first_name",
    "last_name", "organization", "locale", "title", "image", "location", "properties",
})
LOCATION_ATTRIBUTES = frozenset({
    "address1", "address2", "city", "country", "latitude", "longitude", "region", "zip",
    "timezone", "ip",
})
EVENT_ATTRIBUTES = frozenset({
    "properties", "time", "value", "value_currency", "unique_id", "metric", "profile", "backfill",
})
SUBSCRIBER_ATTRIBUTES = frozenset({
    "email", "phone_number", "subscriptions", "age_gated_date_of_birth",
})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")
# Revisions are retired two years after release; the oldest still served.
OLDEST_REVISION = "2024-07-15"


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, pointer: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.pointer = pointer
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": self.status,
            "code": self.code,
            "title": _TITLES.get(self.code, "Error."),
            "detail": self.detail,
        }
        if self.pointer:
            error["source"] = {"pointer": self.pointer}
        return {"errors": [error]}


_TITLES = {
    "invalid": "Invalid input.",
    "not_authenticated": "Authentication credentials were not provided.",
    "authentication_failed": "Incorrect authentication credentials.",
    "not_found": "Not found.",
    "throttled": "Request was throttled.",
    "unsupported_media_type": "Unsupported media type.",
    "gone": "Gone.",
    "error": "A server error occurred.",
}


def check_headers(headers: Mapping[str, str], api_key: str | None) -> None:
    """``headers`` must look names up case-insensitively, as WebOb's do."""
    auth = headers.get("Authorization", "")
    if not auth:
        raise ApiError(401, "not_authenticated", "Missing Authorization header.")
    scheme, _, key = auth.partition(" ")
    if scheme != "Klaviyo-API-Key" or not key.startswith("pk_") or \
            (api_key is not None and key != api_key):
        raise ApiError(401, "authentication_failed", "Invalid API key.")
    revision = headers.get("revision", "")
    if not _REVISION.match(revision):
        raise ApiError(400, "invalid", "A valid revision header is required.",
                       headers={"X-Klaviyo-Field": "revision"})
    if revision < OLDEST_REVISION:
        raise ApiError(410, "gone", f"Revision {revision} has been retired.")


def check_media_type(content_type: str) -> None:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in ("application/vnd.api+json", "application/json"):
        raise ApiError(415, "unsupported_media_type",
                       f"Unsupported media type {kind!r} in request.")


def resource(body: Any, kind: str, pointer: str = "/data") -> dict[str, Any]:
    """``body["data"]`` if it is a resource object of type ``kind``."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid", "The request body must be a JSON:API document.", pointer)
    if data.get("type") != kind:
        raise ApiError(400, "invalid", f"Expected type {kind!r}.", pointer + "/type")
    attributes = data.get("attributes")
    if not isinstance(attributes, dict):
        raise ApiError(400, "invalid", "Missing attributes.", pointer + "/attributes")
    return data


def closed(attributes: dict[str, Any], allowed: frozenset[str], pointer: str) -> None:
    for name in attributes:
        if name not in allowed:
            raise ApiError(400, "invalid", f"'{name}' is not a valid field for the resource.",
                           f"{pointer}/{name}")


def profile_attributes(attributes: dict[str, Any], pointer: str,
                       identifier_required: bool = True) -> None:
    closed(attributes, PROFILE_ATTRIBUTES, pointer)
    location = attributes.get("location")
    if location is not None:
        if not isinstance(location, dict):
            raise ApiError(400, "invalid", "location must be an object.", f"{pointer}/location")
        closed(location, LOCATION_ATTRIBUTES, f"{pointer}/location")
    properties = attributes.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise ApiError(400, "invalid", "properties must be an object.", f"{pointer}/properties")
    contact(attributes, pointer)
    if identifier_required and not any(
        attributes.get(name) for name in ("email", "phone_number", "external_id", "_kx",
                                          "anonymous_id")
    ):
        raise ApiError(400, "invalid", "A profile identifier is required.", pointer)


def contact(attributes: dict[str, Any], pointer: str) -> None:
    email = attributes.get("email")
    if email is not None and (not isinstance(email, str) or not _EMAIL.match(email)):
        raise ApiError(400, "invalid", f"Invalid email address {email!r}.", f"{pointer}/email")
    phone = attributes.get("phone_number")
    if phone is not None and (not isinstance(phone, str) or not _E164.match(phone)):
        raise ApiError(400, "invalid", f"Invalid phone number {phone!r}.",
                       f"{pointer}/phone_number")


def event_attributes(attributes: dict[str, Any], pointer: str, inline_profile: bool) -> None:
    closed(attributes, EVENT_ATTRIBUTES if inline_profile else EVENT_ATTRIBUTES - {"profile"},
           pointer)
    if not isinstance(attributes.get("properties"), dict):
        raise ApiError(400, "invalid", "properties is required.", f"{pointer}/properties")
    metric = attributes.get("metric", {})
    name = metric.get("data", {}).get("attributes", {}).get("name") \
        if isinstance(metric, dict) else None
    if not isinstance(name, str) or not name or len(name) >= 128:
        raise ApiError(400, "invalid", "A metric name under 128 characters is required.",
                       f"{pointer}/metric")
    if "time" in attributes:
        try:
            datetime.fromisoformat(str(attributes["time"]).replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, "invalid", "time must be ISO 8601.", f"{pointer}/time") from None
    if "value" in attributes and (isinstance(attributes["value"], bool) or
                                  not isinstance(attributes["value"], (int, float))):
        raise ApiError(400, "invalid", "value must be a number.", f"{pointer}/value")
    if inline_profile:
        profile = attributes.get("profile", {}).get("data", {})
        if not isinstance(profile, dict) or profile.get("type") != "profile":
            raise ApiError(400, "invalid", "A profile is required.", f"{pointer}/profile")
        if not profile.get("id"):
            profile_attributes(profile.get("attributes", {}), f"{pointer}/profile/data/attributes")


def subscriber(item: Any, pointer: str) -> dict[str, Any]:
    if not isinstance(item, dict) or item.get("type") != "profile":
        raise ApiError(400, "invalid", "Expected a profile.", pointer)
    attributes = item.get("attributes")
    if not isinstance(attributes, dict):
        raise ApiError(400, "invalid", "Missing attributes.", f"{pointer}/attributes")
    closed(attributes, SUBSCRIBER_ATTRIBUTES, f"{pointer}/attributes")
    contact(attributes, f"{pointer}/attributes")
    if not attributes.get("email") and not attributes.get("phone_number"):
        raise ApiError(400, "invalid", "An email or phone number is required.",
                       f"{pointer}/attributes")
    channels = attributes.get("subscriptions")
    if not isinstance(channels, dict) or not channels:
        raise ApiError(400, "invalid", "subscriptions is required.",
                       f"{pointer}/attributes/subscriptions")
    # Klaviyo refuses consent on a channel the profile gives no address for.
    for channel, needs in (("email", "email"), ("sms", "phone_number")):
        if channel in channels and not attributes.get(needs):
            raise ApiError(400, "invalid", f"{needs} is required to subscribe to {channel}.",
                           f"{pointer}/attributes/{needs}")
    return attributes
