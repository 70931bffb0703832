"""A before_send hook named by its dotted path in KLAVIYO_MIDDLEWARE."""

from __future__ import annotations

from typing import Any


def tag_source(submission: Any, request: Any) -> None:
    submission.profile.setdefault("properties", {})["Signed up on"] = "django_site"
