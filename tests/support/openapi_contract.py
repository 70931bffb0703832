"""An extra layer, where it can be had: Klaviyo's OpenAPI spec itself.

The suite's contract is ``klaviyo_models`` (the official SDK's models, which
``make test`` installs). Where ``$KLAVIYO_OPENAPI_SPEC`` names a copy of the
published spec (a trimmed one with the operations delivery uses will do),
bodies and answers are also held to it; without it nothing is skipped. The
spec is never copied into this project.

Klaviyo rejects attributes it does not know, but its spec does not say
``additionalProperties: false``. To test the way Klaviyo behaves, every
object schema that lists its properties is made closed here; free-form
objects (``properties``, the custom-property bag) stay open.
"""

from __future__ import annotations

import copy
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30WriteValidator, oas30_format_checker


def spec_path() -> Path | None:
    named = os.environ.get("KLAVIYO_OPENAPI_SPEC")
    return Path(named) if named else None


@lru_cache(maxsize=1)
def spec_available() -> bool:
    path = spec_path()
    return path is not None and path.exists()


@lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    path = spec_path()
    assert path is not None, "no copy of Klaviyo's spec beside the repository"
    with path.open(encoding="utf-8") as handle:
        spec: dict[str, Any] = json.load(handle)
    spec["components"] = _closed(spec["components"])
    return spec


@lru_cache(maxsize=1)
def load_raw_spec() -> dict[str, Any]:
    path = spec_path()
    assert path is not None, "no copy of Klaviyo's spec beside the repository"
    with path.open(encoding="utf-8") as handle:
        spec: dict[str, Any] = json.load(handle)
    return spec


def _closed(node: Any) -> Any:
    if isinstance(node, dict):
        closed = {key: _closed(value) for key, value in node.items()}
        if isinstance(closed.get("properties"), dict) and "additionalProperties" not in closed:
            closed["additionalProperties"] = False
        return closed
    if isinstance(node, list):
        return [_closed(item) for item in node]
    return node


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The spec's path template and operation for a concrete request path."""
    spec = load_spec()
    for template, operations in spec["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            return template, operations[method.lower()]
    raise LookupError(f"{method} {path} is not an operation in Klaviyo's spec")


def request_errors(method: str, path: str, body: Any) -> list[str]:
    """Every way ``body`` breaks the request schema of ``method path``."""
    spec = load_spec()
    _, operation = operation_for(method, path)
    content = operation["requestBody"]["content"]["application/vnd.api+json"]
    root = copy.deepcopy(content["schema"])
    root["components"] = spec["components"]
    validator = OAS30WriteValidator(root, format_checker=oas30_format_checker)
    errors: list[ValidationError] = sorted(validator.iter_errors(body), key=str)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors]


def response_errors(method: str, path: str, status: int, body: Any) -> list[str]:
    """Every way ``body`` breaks the response schema Klaviyo's spec gives for
    ``status`` (exactly, else its class: ``4XX``); ``[]`` for a status the
    spec gives no body (204)."""
    from openapi_schema_validator import OAS30ReadValidator

    # The spec as published: an answer may carry more than it lists (Klaviyo
    # adds "status" to its errors), but never less than it requires.
    spec = load_raw_spec()
    _, operation = operation_for(method, path)
    responses = operation["responses"]
    response = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    if response is None:
        return [f"status {status} is not an answer of {method} {path}"]
    while "$ref" in response:
        response = _resolve(spec, response["$ref"])
    content = response.get("content", {}).get("application/vnd.api+json")
    if content is None:
        return [] if body in (None, b"", "") else [f"status {status} has no body, got one"]
    root = copy.deepcopy(content["schema"])
    root["components"] = spec["components"]
    validator = OAS30ReadValidator(root, format_checker=oas30_format_checker)
    errors: list[ValidationError] = sorted(validator.iter_errors(body), key=str)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors]


def _resolve(spec: dict[str, Any], reference: str) -> dict[str, Any]:
    node: Any = spec
    for part in reference.lstrip("#/").split("/"):
        node = node[part]
    return dict(node)
