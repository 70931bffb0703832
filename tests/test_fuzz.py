"""Property-based tests: whatever arrives, never an unhandled exception or a 5xx."""

from __future__ import annotations

import json
from wsgiref.validate import validator

import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webob import Request

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.web.body import (
    BodyError,
    BodyLimits,
    nest_pairs,
    parse_json,
    parse_urlencoded,
)
from klaviyo_middleware.web.routes import ACTION_PATHS

from support.klaviyo_fake import API_KEY, API_URL

LIMITS = BodyLimits(max_fields=200, max_depth=6)
FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

keys = st.one_of(
    st.text(max_size=30),
    st.builds(lambda name, parts: name + "".join(f"[{p}]" for p in parts),
              st.sampled_from(["email", "extra", "event", "lists", "list", "profile", "a"]),
              st.lists(st.one_of(st.just(""), st.text(max_size=5),
                                 st.integers(0, 3).map(str)), max_size=8)),
)


@FUZZ
@given(st.lists(st.tuples(keys, st.text(max_size=20)), max_size=60))
def test_bracket_parser_only_raises_body_errors(pairs):
    try:
        result = nest_pairs(pairs, LIMITS)
    except BodyError as error:
        assert error.status in (400, 413)
        return
    assert isinstance(result, dict)
    json.dumps(result)


@FUZZ
@given(st.binary(max_size=400))
def test_urlencoded_and_json_readers(body):
    for reader in (parse_urlencoded, parse_json):
        try:
            reader(body, LIMITS)
        except BodyError as error:
            assert error.status in (400, 413)


def inner(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [b"inner:", body]


MIDDLEWARE = KlaviyoMiddleware(validator(inner), api_key=API_KEY, api_url=API_URL,
                               delivery="sync", sync_retry_budget=0, action_field=True,
                               max_fields=100, max_depth=6, honeypot="website",
                               client_rate_limit="1000/second")
# Encoded as a server would put a raw request path into PATH_INFO (latin-1).
paths = st.one_of(st.sampled_from(sorted(ACTION_PATHS)),
                  st.text(st.characters(max_codepoint=255), max_size=40).map(lambda t: "/" + t))
content_types = st.one_of(
    st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                     "application/json", "text/plain", "", "application/json; charset=latin-1",
                     "multipart/form-data", "application/vnd.api+json"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "replace"),
              st.lists(st.tuples(keys, st.text(max_size=15)), max_size=20)),
    st.builds(lambda data: json.dumps(data).encode(),
              st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
                           lambda inner_: st.lists(inner_, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner_, max_size=3),
                           max_leaves=20)),
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"]),
    path=paths, content_type=content_types, body=bodies,
    origin=st.one_of(st.none(), st.just("http://localhost"), header_values),
    accept=st.one_of(st.none(), st.just("application/json"), header_values),
    extra=st.dictionaries(st.sampled_from(["Referer", "X-Requested-With", "Sec-Fetch-Site",
                                           "X-Forwarded-For", "Cookie"]), header_values,
                          max_size=3),
)
def test_the_middleware_never_fails(method, path, content_type, body, origin, accept, extra):
    request = Request.blank("/", method=method)
    request.environ["PATH_INFO"] = path
    request.environ["CONTENT_TYPE"] = content_type
    request.body = body
    for name, value in [("Origin", origin), ("Accept", accept), *extra.items()]:
        if value is not None:
            request.headers[name] = value
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.POST, API_URL + "/api/profile-import", status=500)
        response = request.get_response(MIDDLEWARE)
    assert response.status_int < 500 or response.status_int == 503
    if path not in ACTION_PATHS and response.headers.get("Content-Type") == \
            "application/octet-stream":
        assert response.body == b"inner:" + body
