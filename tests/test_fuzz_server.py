"""Fuzzing through a real server: generated multipart, JSON and urlencoded posts
and headers, sent over a socket to the middleware under waitress, which
delivers to a fake Klaviyo on another socket.

Asserted for every request: no 5xx (but 503 with ``Retry-After``), an answer
well within a bound (a request that held the process would time out), and
at the end, nothing reached Klaviyo that Klaviyo would refuse or that is not
strict JSON. The run is bounded by the number of examples.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klaviyo_middleware import KlaviyoMiddleware

from support.klaviyo_fake import API_KEY, LoopbackKlaviyo

waitress = pytest.importorskip("waitress.server")

# Far above any honest answer (milliseconds); a request that stalls the
# process, as a million-digit number once did, runs into it.
ANSWER_BOUND = 10.0
ACTIONS = ["/klaviyoConnect/api/updateProfile", "/klaviyoConnect/api/identify",
           "/actions/klaviyoconnect/api/track", "/contact"]
FIELD_NAMES = ["email", "profile[email]", "first_name", "phone_number", "list", "lists[]",
               "subscribe", "confirmOptIn", "event[name]", "event[value]",
               "event[extra][sku]", "extra[color]", "profile[properties][Colour]", "redirect",
               "forward", "action", "klaviyoProfileMapping", "id", "image", "csrf_token"]
SERVER_FUZZ = settings(max_examples=150, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow,
                                              HealthCheck.function_scoped_fixture])


def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the site"]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, LoopbackKlaviyo]]:
    with LoopbackKlaviyo() as klaviyo:
        app = KlaviyoMiddleware(inner, api_key=API_KEY, api_url=klaviyo.url, delivery="sync",
                                sync_retry_budget=0, action_field=True, max_fields=100,
                                allowed_hosts=["shop.example.com"], phone_region="GB")
        server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4,
                                        clear_untrusted_proxy_headers=True)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            yield server.effective_port, klaviyo
        finally:
            # Closed in the server's own loop thread: closing its sockets
            # from here races the loop's poll (EBADF in that thread, which
            # pytest then charges to whichever test runs next).
            server.trigger.pull_trigger(server.close)
            thread.join(timeout=30)
            assert not thread.is_alive(), "waitress did not stop"
            app.close()
    assert klaviyo.fake.violations == [], "requests that Klaviyo would reject"
    # The run reached Klaviyo too, not only the error paths.
    assert klaviyo.fake.calls
    for call in klaviyo.fake.calls:
        json.dumps(call.body, allow_nan=False)  # strict JSON only


values = st.one_of(
    st.sampled_from(["a@example.com", "josé@example.com", "+44 20 7946 0958", "Y6nRLr", "1",
                     "0", "9.99", "1e999", "1e1000000", "NaN", "/thanks", "http://[x",
                     "newsletter/thanks", "klaviyoconnect/api/track", "formdata", ""]),
    st.text(max_size=30),
)
names = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=20),
                  st.builds(lambda base, digits: f"{base}[{'9' * digits}]",
                            st.sampled_from(["extra", "lists", "event"]),
                            st.integers(1, 5000)))
# Half the posts start from a valid form, so that the noise also reaches
# delivery rather than stopping at "Enter your email address".
valid_start = st.sampled_from([
    [], [("email", "a@example.com")],
    [("email", "b@example.com"), ("list", "Y6nRLr"), ("event[name]", "Ordered")],
    [("profile[phone_number]", "+447946000123"), ("list", "Y6nRLr"), ("subscribe", "1")],
])
pairs = st.builds(lambda start, noise: start + noise, valid_start,
                  st.lists(st.tuples(names, values), max_size=6))


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b0und", "----x", "a" * 70]))
    chunks = []
    for name, value in draw(pairs):
        disposition = draw(st.sampled_from([
            'form-data; name="{}"', "form-data", "form-data; name*=UTF-8''{}",
            'form-data; name="{}"; filename="f.txt"', 'attachment; name="{}"',
        ])).format(name.replace('"', ""))
        extra = draw(st.sampled_from(["", "Content-Type: text/plain; charset=latin-1\r\n",
                                      "Content-Type: multipart/mixed; boundary=n\r\n",
                                      "Content-Length: 3\r\n"]))
        encoded = value.encode(draw(st.sampled_from(["utf-8", "latin-1"])), "replace")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n"
                      .encode("utf-8", "replace") + encoded + b"\r\n")
    ending = draw(st.sampled_from([f"--{boundary}--\r\n", "", f"--{boundary}"]))
    charset = draw(st.sampled_from(["", "; charset=utf-8", "; charset=koi8-r"]))
    return (b"".join(chunks) + ending.encode(),
            f"multipart/form-data; boundary={boundary}{charset}")


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30),
              st.floats(allow_nan=True, allow_infinity=True), values),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.one_of(st.sampled_from(["name", "value", "extra", "email",
                                                  "properties", "location"]),
                                st.text(max_size=6)), children, max_size=4),
    max_leaves=15)


@st.composite
def json_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    data = {name.split("[")[0]: value for name, value in draw(pairs)}
    data.update(draw(st.dictionaries(st.sampled_from(["event", "profile", "extra", "lists"]),
                                     json_values, max_size=3)))
    return json.dumps(data).encode(), "application/json"


@st.composite
def urlencoded_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    from urllib.parse import urlencode

    return urlencode(draw(pairs)).encode(), "application/x-www-form-urlencoded"


headers = st.dictionaries(
    st.sampled_from(["Origin", "Referer", "Accept", "X-Requested-With", "Sec-Fetch-Site",
                     "Host"]),
    st.one_of(st.sampled_from(["http://localhost", "http://[x/", "http://[::1]:8000",
                               "application/json", "null", "[::1]:8000", "shop.example.com"]),
              st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30)),
    max_size=3)


@SERVER_FUZZ
@given(path=st.sampled_from(ACTIONS),
       body=st.one_of(multipart_bodies(), json_bodies(), urlencoded_bodies()),
       extra=st.one_of(st.just({}), headers))
def test_no_post_gets_a_5xx_or_holds_the_server(served, path, body, extra):
    port, _ = served
    payload, content_type = body
    answer = post_raw(port, path, payload, {"Content-Type": content_type, **extra})
    if answer.status == 503:
        assert answer.getheader("Retry-After")
    else:
        assert answer.status < 500, (answer.status, payload[:200])


def post_raw(port: int, path: str, payload: bytes,
             headers: dict[str, str]) -> http.client.HTTPResponse:
    """Send the headers exactly as given (no Host unless they name one)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_BOUND)
    try:
        connection.putrequest("POST", path, skip_host="Host" in headers)
        connection.putheader("Content-Length", str(len(payload)))
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(payload)
        answer = connection.getresponse()
        answer.read()
        return answer
    finally:
        connection.close()


# Every header the middleware or WebOb may read, at every length up to what
# waitress accepts (256 KB of headers in all): each answer must stay cheap.
HEADER_NAMES = ["Accept-Language", "Accept", "Referer", "Origin", "Sec-Fetch-Site",
                "X-Forwarded-For", "X-Requested-With", "Cookie", "Content-Type", "User-Agent"]
HEADER_UNITS = ["de-DE;q=0.9, ", "aa-", "a", ",", ";q=", "http://x/", "[::1]", "1.2.3.4, ",
                "%zz", "é", "multipart/form-data; boundary=", "*/*;q=0.1,"]
long_headers = st.builds(lambda unit, count: unit * count, st.sampled_from(HEADER_UNITS),
                         st.sampled_from([0, 1, 10, 1_000, 10_000, 100_000, 200_000]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ACTIONS), name=st.sampled_from(HEADER_NAMES), value=long_headers,
       body=st.sampled_from([b"email=nope", b"email=a%40example.com&list=Y6nRLr"]))
def test_headers_of_every_length_cost_little(served, path, name, value, body):
    port, _ = served
    value = value[:250_000].encode("utf-8")[:250_000].decode("latin-1")
    answer = post_raw(port, path, body, {
        "Content-Type": "application/x-www-form-urlencoded", name: value})
    assert answer.status < 500 or (answer.status == 503 and answer.getheader("Retry-After"))


def test_a_200_kb_accept_language_does_not_hold_an_ordinary_visitor(served):
    """Four posts with huge Accept-Language headers at once, then a plain GET:
    the GET is answered while they run (it once waited 85 s)."""
    port, _ = served
    # One long hyphenated "tag": WebOb's parser backtracks over it in time
    # that grows with the square of its length (11 s for 180 KB).
    header = "aa-" * 66_000 + "a"

    def post() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_BOUND)
        try:
            connection.request("POST", "/klaviyoConnect/api/identify", body=b"email=nope",
                               headers={"Content-Type": "application/x-www-form-urlencoded",
                                        "Accept-Language": header})
            connection.getresponse().read()
        finally:
            connection.close()

    posts = [threading.Thread(target=post) for _ in range(4)]
    for thread in posts:
        thread.start()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_BOUND)
    try:
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"the site"
    finally:
        connection.close()
    for thread in posts:
        thread.join(ANSWER_BOUND)
        assert not thread.is_alive()
