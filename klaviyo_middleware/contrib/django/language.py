"""The language Django would pick for the request: its language cookie,
``Accept-Language`` among ``LANGUAGES``, then ``LANGUAGE_CODE``."""

from __future__ import annotations

from typing import Any

from django.core.handlers.wsgi import WSGIRequest
from django.utils import translation


def django_language(environ: dict[str, Any]) -> str | None:
    language = translation.get_language_from_request(WSGIRequest(environ))
    return str(language) if language else None
