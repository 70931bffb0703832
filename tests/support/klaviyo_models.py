"""Hold requests and answers to Klaviyo's own definitions: the generated
models of its official Python SDK (``klaviyo-api``, pinned in the ``test``
extra, so ``make test`` installs them on any clone).

The SDK is generated from the same OpenAPI spec Klaviyo's documentation is
built from. Nothing is written down twice here: every operation — its
method and path, the model of its body, the model of each answer, its rate
limits — is read from the SDK's API classes, so a newer SDK brings its own
table.

Klaviyo refuses attributes it does not know, but the generated models
ignore unknown keys. :func:`request_errors` therefore walks a body beside
its model and names every key the model does not declare; free-form
objects (``properties``, the custom-property bag) stay open. Answers are
checked as published: an answer may carry more than a model lists (Klaviyo
adds ``status`` to its errors) but never less than it requires.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import openapi_client.api
import openapi_client.models
from klaviyo_api import KlaviyoAPI
from pydantic import BaseModel, TypeAdapter, ValidationError

#: The revision the installed SDK was generated for (its ``revision`` header).
SDK_REVISION: str = KlaviyoAPI._REVISION


@dataclass(frozen=True)
class Operation:
    """One operation of Klaviyo's API, as the SDK declares it."""

    name: str
    method: str
    template: str
    body: type[BaseModel] | None
    answers: dict[str, str] = field(default_factory=dict)
    burst: int | None = None
    steady: int | None = None

    def matches(self, method: str, path: str) -> bool:
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", self.template) + "$"
        return self.method == method.upper() and re.match(pattern, path) is not None


_METHOD = re.compile(r"method='(\w+)'")
_PATH = re.compile(r"resource_path='([^']+)'")
_ANSWERS = re.compile(r"_response_types_map[^{]*\{(.*?)\}", re.S)
_ANSWER = re.compile(r"'(\w+)':\s*(?:\"(\w+)\"|None)")
_DEF = re.compile(r"^    def (\w+)\((.*?)(?=^    (?:@|def )|\Z)", re.S | re.M)
_LIMITS = re.compile(r"Burst: `(\d+)/s`<br>Steady: `(\d+)/m`")


@lru_cache(maxsize=1)
def operations() -> tuple[Operation, ...]:
    found: dict[tuple[str, str], Operation] = {}
    for module_info in pkgutil.iter_modules(openapi_client.api.__path__):
        module = importlib.import_module(f"openapi_client.api.{module_info.name}")
        # One read of the module's text, cut at its methods (inspect.getsource
        # per method costs seconds over the whole SDK).
        methods = dict(_DEF.findall(Path(inspect.getfile(module)).read_text(encoding="utf-8")))
        for api in vars(module).values():
            if not (isinstance(api, type) and api.__name__.endswith("Api")):
                continue
            for name, function in vars(api).items():
                serialize = methods.get(f"_{name}_serialize")
                if name.startswith("_") or serialize is None:
                    continue
                operation = _operation(name, function, methods[name], serialize)
                found.setdefault((operation.method, operation.template), operation)
    return tuple(found.values())


def _operation(name: str, function: Any, source: str, serialize: str) -> Operation:
    method = _METHOD.search(serialize)
    path = _PATH.search(serialize)
    assert method and path, f"the SDK's {name} names no method or path"
    hints = typing.get_type_hints(function)
    body = next((hint for hint in hints.values()
                 if isinstance(hint, type) and issubclass(hint, BaseModel)), None)
    answers_block = _ANSWERS.search(source)
    # '' is an answer the SDK declares without a body (204, and 202 for some).
    answers = dict(_ANSWER.findall(answers_block.group(1))) if answers_block else {}
    limits = _LIMITS.search(function.__doc__ or "")
    return Operation(name, method.group(1), path.group(1), body, answers,
                     int(limits.group(1)) if limits else None,
                     int(limits.group(2)) if limits else None)


def operation_for(method: str, path: str) -> Operation:
    """The SDK's operation for a concrete request path."""
    for operation in operations():
        if operation.matches(method, path):
            return operation
    raise LookupError(f"{method} {path} is not an operation of Klaviyo's API")


def rate_limit(method: str, path: str) -> tuple[int, int]:
    """Klaviyo's published (burst a second, steady a minute) for an operation."""
    operation = operation_for(method, path)
    assert operation.burst is not None and operation.steady is not None, operation.name
    return operation.burst, operation.steady


def request_errors(method: str, path: str, body: Any) -> list[str]:
    """Every way ``body`` breaks the request model of ``method path``,
    unknown attribute names included."""
    operation = operation_for(method, path)
    if operation.body is None:
        return [] if body is None else [f"{operation.name} takes no body"]
    errors = _model_errors(operation.body, body)
    return errors or _unknown_keys(operation.body, body, "")


def response_errors(method: str, path: str, status: int, body: Any) -> list[str]:
    """Every way ``body`` breaks the answer model the SDK gives for ``status``
    (exactly, else its class: ``4XX``); ``[]`` for an answer without a body."""
    operation = operation_for(method, path)
    answers = operation.answers
    key = str(status) if str(status) in answers else f"{str(status)[0]}XX"
    if key not in answers:
        return [f"status {status} is not an answer of {operation.name}"]
    model_name = answers[key]
    if not model_name:  # declared without a body
        return [] if body in (None, b"", "") else [f"status {status} has no body, got one"]
    model = getattr(openapi_client.models, model_name)
    return _model_errors(model, body)


def _model_errors(model: type[BaseModel], data: Any) -> list[str]:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return [f"{'/'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()]
    return []


def _unknown_keys(annotation: Any, value: Any, where: str) -> list[str]:
    """Keys in ``value`` that ``annotation`` does not declare, at any depth."""
    if value is None or annotation is Any:
        return []
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _unknown_keys(arguments[0], value, where)
    if origin in (typing.Union, types.UnionType):
        branches = [branch for branch in arguments if branch is not type(None)]
        # The branch the value validates as is the one whose keys count.
        for branch in branches:
            if not _branch_errors(branch, value):
                return _unknown_keys(branch, value, where)
        return _unknown_keys(branches[0], value, where) if branches else []
    if origin is list and isinstance(value, list):
        return [error for index, item in enumerate(value)
                for error in _unknown_keys(arguments[0], item, f"{where}/{index}")]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
            and isinstance(value, dict):
        fields = {(info.alias or name): info for name, info in annotation.model_fields.items()}
        errors = []
        for key, item in value.items():
            info = fields.get(key)
            if info is None:
                errors.append(f"{where}/{key}: not an attribute of {annotation.__name__}")
            else:
                errors.extend(_unknown_keys(info.annotation, item, f"{where}/{key}"))
        return errors
    return []  # a scalar, or a free-form dict


def _branch_errors(branch: Any, value: Any) -> bool:
    if isinstance(branch, type) and issubclass(branch, BaseModel):
        return bool(_model_errors(branch, value)) or bool(_unknown_keys(branch, value, ""))
    try:
        TypeAdapter(branch).validate_python(value)
    except ValidationError:
        return True
    return False
