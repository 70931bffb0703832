"""Reading a submission body into nested data (docs/forms.md).

Forms name their fields with PHP's bracket syntax (``extra[color]``,
``lists[]``, ``event[extra][items][0][sku]``) because the Craft plugin did;
this module turns them into the dicts and lists a JSON body would carry, so
everything downstream sees one shape whatever the content type.

Everything here is bounded: the body is never read past ``max_body_size``,
and the number of fields and the nesting depth are capped before any
structure is built, so a hostile body costs at most a bounded amount of work.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from multipart import MultipartError, PushMultipartParser, parse_options_header
from webob import Request

from klaviyo_middleware.i18n.message import msg

FORM_URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON_TYPES = ("application/json", "application/vnd.api+json")

# ``name[a][b][]`` → ``name`` and ``[a][b][]``. PHP ignores anything after
# the last closing bracket, and so do we.
_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
# A bracket index longer than this is a name, not a position: int() of a
# 4,300-digit string raises, and no form has a billion list entries.
_MAX_INDEX_DIGITS = 9
# JSON integers beyond 64 bits are refused: Python would build them at any
# size (a million digits take seconds), and Klaviyo stores 64-bit numbers.
_MAX_INTEGER_DIGITS = 19


@dataclass(frozen=True)
class BodyLimits:
    """Bounds applied to every intercepted body."""

    max_body_size: int = 64 * 1024
    max_fields: int = 1000
    max_depth: int = 10
    # Klaviyo refuses strings over 100 KB.
    max_string_length: int = 100_000


class BodyError(Exception):
    """A body the middleware refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def media_type(content_type: str | None) -> str:
    """``'text/html; charset=utf-8'`` → ``'text/html'``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def read_body(environ: dict[str, Any], limits: BodyLimits) -> bytes:
    """Read the request body once, within the size limit, and make it re-readable.

    ``wsgi.input`` is replaced by an in-memory copy so that the inner app, when
    the request is forwarded, reads the same bytes from the start.
    """
    raw_length = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if raw_length:
        try:
            length = int(raw_length)
        except ValueError:
            raise BodyError(400, msg("The Content-Length header is not a number.")) from None
        if length < 0:
            raise BodyError(400, msg("The Content-Length header is negative."))
        if length > limits.max_body_size:
            raise BodyError(413, _too_large(limits))
        body = stream.read(length) if length else b""
    elif environ.get("wsgi.input_terminated"):
        # Chunked uploads: the server promises EOF, so read one byte past
        # the limit to tell "exactly at the limit" from "too large".
        body = stream.read(limits.max_body_size + 1)
        if len(body) > limits.max_body_size:
            raise BodyError(413, _too_large(limits))
    else:
        # PEP 3333: without a Content-Length there is no body to read.
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _too_large(limits: BodyLimits) -> str:
    return msg("The submission is larger than {limit} bytes.", limit=limits.max_body_size)


def parse_body(request: Request, body: bytes, limits: BodyLimits) -> dict[str, Any]:
    """Nested data from an urlencoded, multipart or JSON body."""
    kind = media_type(request.content_type)
    if kind in JSON_TYPES:
        return parse_json(body, limits)
    if kind == FORM_URLENCODED:
        return nest_pairs(parse_urlencoded(body, limits), limits)
    if kind == MULTIPART:
        return nest_pairs(_multipart_pairs(request, body, limits), limits)
    if not body:
        return {}
    raise BodyError(
        415,
        msg("Send the form as application/x-www-form-urlencoded, multipart/form-data "
            "or application/json."),
    )


def _decode(raw: bytes) -> str:
    """The one UTF-8 rule for every body type: invalid bytes are refused,
    never replaced with U+FFFD and sent on."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError(400, msg("The submission is not valid UTF-8.")) from None


def parse_urlencoded(body: bytes, limits: BodyLimits) -> list[tuple[str, str]]:
    text = _decode(body)
    try:
        return parse_qsl(
            text,
            keep_blank_values=True,
            max_num_fields=limits.max_fields,
            errors="strict",
        )
    except ValueError as exc:
        if "max_num_fields" in str(exc) or "Max number of fields" in str(exc):
            raise BodyError(413, _too_many_fields(limits)) from None
        raise BodyError(400, msg("The submission is not valid form data.")) from None


def _multipart_pairs(request: Request, body: bytes, limits: BodyLimits) -> list[tuple[str, str]]:
    """Text fields of a ``multipart/form-data`` body, strictly parsed.

    The ``multipart`` package does the parsing (WebOb's relies on the
    deprecated ``cgi`` module, which recurses into nested parts and tolerates
    nameless ones); every part must be named, and text must be UTF-8, the
    same rule as for the other body types.
    """
    _, options = parse_options_header(request.environ.get("CONTENT_TYPE") or "")
    boundary = options.get("boundary")
    if not boundary:
        raise BodyError(400, msg("The multipart submission has no boundary."))
    pairs: list[tuple[str, str]] = []
    name: str | None = None
    is_file = False
    chunks: list[bytes] = []
    try:
        with PushMultipartParser(
            boundary,
            content_length=len(body),
            max_segment_count=limits.max_fields,
            # Each UTF-8 character takes at most four bytes.
            max_segment_size=limits.max_string_length * 4,
            strict=True,
        ) as parser:
            for event in parser.parse(body):
                if event is None:
                    if name is not None and not is_file:
                        pairs.append((name, _utf8(b"".join(chunks), limits)))
                    name, chunks = None, []
                elif isinstance(event, (bytes, bytearray)):
                    if not is_file:
                        chunks.append(bytes(event))
                else:
                    if not event.name:
                        raise BodyError(400, msg("Every part of the form must have a name."))
                    name = event.name
                    # Uploaded files are not ours to send anywhere.
                    is_file = event.filename is not None
            for _ in parser.parse(b""):
                pass
    except MultipartError as exc:
        if "count" in str(exc):
            raise BodyError(413, _too_many_fields(limits)) from None
        if "size" in str(exc):
            raise BodyError(413, _too_long(limits)) from None
        raise BodyError(400, msg("The submission is not valid multipart form data.")) from None
    return pairs


def _utf8(raw: bytes, limits: BodyLimits) -> str:
    value = _decode(raw)
    if len(value) > limits.max_string_length:
        raise BodyError(413, _too_long(limits))
    return value


def _too_many_fields(limits: BodyLimits) -> str:
    return msg("The submission has more than {limit} fields.", limit=limits.max_fields)


def parse_json(body: bytes, limits: BodyLimits) -> dict[str, Any]:
    if not body.strip():
        return {}
    text = _decode(body)
    try:
        data = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise BodyError(400, _too_deep(limits)) from None
    except ValueError:
        raise BodyError(400, msg("The submission is not valid JSON.")) from None
    if not isinstance(data, dict):
        raise BodyError(400, msg("The JSON submission must be an object."))
    _check_json_bounds(data, limits)
    return data


def _refuse_constant(name: str) -> NoReturn:
    # NaN and Infinity are not JSON, though Python's parser accepts them;
    # Klaviyo cannot store them, so they must never be accepted.
    raise BodyError(400, msg("The submission contains {value}, which is not a number JSON allows.",
                             value=name))


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_INTEGER_DIGITS:
        raise BodyError(400, _too_big())
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # 1e999 overflows to infinity.
        raise BodyError(400, _too_big())
    return value


def _too_big() -> str:
    return msg("The submission contains a number that is too large.")


def _check_json_bounds(data: dict[str, Any], limits: BodyLimits) -> None:
    # Iterative walk: the depth limit must hold without relying on recursion.
    count = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_depth:
            raise BodyError(400, _too_deep(limits))
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            count += 1
            if count > limits.max_fields:
                raise BodyError(413, _too_many_fields(limits))
            if isinstance(node, str) and len(node) > limits.max_string_length:
                raise BodyError(413, _too_long(limits))
            continue
        stack.extend((child, depth + 1) for child in children)


def _too_long(limits: BodyLimits) -> str:
    return msg("A field is longer than {limit} characters.", limit=limits.max_string_length)


def _too_deep(limits: BodyLimits) -> str:
    return msg("The submission is nested more than {limit} levels deep.", limit=limits.max_depth)


def split_key(key: str) -> tuple[str, list[str]] | None:
    """``'a[b][]'`` → ``('a', ['b', ''])``; ``None`` for a key with no name."""
    match = _KEY.match(key)
    if match is None:
        return None
    name, brackets = match.groups()
    return name, _SEGMENT.findall(brackets)


def nest_pairs(pairs: Iterable[tuple[str, str]], limits: BodyLimits) -> dict[str, Any]:
    """Build nested data from ``(key, value)`` pairs, PHP style.

    A later value for the same key wins; ``[]`` appends; a dict whose keys are
    exactly ``0..n-1`` becomes a list.
    """
    root: dict[str, Any] = {}
    for count, (key, value) in enumerate(pairs, start=1):
        if count > limits.max_fields:
            raise BodyError(413, _too_many_fields(limits))
        parsed = split_key(key)
        if parsed is None:
            continue
        name, segments = parsed
        if len(segments) + 1 > limits.max_depth:
            raise BodyError(400, _too_deep(limits))
        if len(value) > limits.max_string_length:
            raise BodyError(413, _too_long(limits))
        _assign(root, [name, *segments], value)
    # The top level stays a dict even if every field name is a number.
    return {key: _listify(value) for key, value in root.items()}


def _assign(node: dict[str, Any], path: list[str], value: str) -> None:
    for position, segment in enumerate(path):
        key = _next_index(node) if segment == "" else segment
        if position == len(path) - 1:
            node[key] = value
            return
        child = node.get(key)
        if not isinstance(child, dict):
            # PHP semantics: a later bracketed key replaces an earlier scalar.
            child = {}
            node[key] = child
        node = child


def _is_index(key: str) -> bool:
    # ASCII only: "¹".isdigit() is true, but int("¹") fails.
    return len(key) <= _MAX_INDEX_DIGITS and key.isascii() and key.isdigit()


def _next_index(node: dict[str, Any]) -> str:
    indexes = [int(key) for key in node if _is_index(key)]
    return str(max(indexes) + 1 if indexes else 0)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value) for key, value in node.items()}
    if converted and all(_is_index(key) for key in converted):
        indexes = sorted(converted, key=int)
        if [int(key) for key in indexes] == list(range(len(indexes))) and all(
            key == str(int(key)) for key in indexes
        ):
            return [converted[key] for key in indexes]
    return converted
