"""A corpus of open-redirect payloads: all refused, for redirect and forward alike."""

from __future__ import annotations

import itertools

import pytest

from klaviyo_middleware import ConfigurationError
from klaviyo_middleware.web.fields import FieldError
from klaviyo_middleware.web.redirects import HostPolicy, forward_target, safe_redirect

ALLOWED = HostPolicy(["good.example", ".shop.example"])

_TARGETS = ["evil.example", "evil.example/path?x=1", "good.example.evil.example"]
_PREFIXES = [
    "//", "///", "////", "\\\\", "\\/", "/\\", "/\\/", "//\\", "/\\\\", "\\\\/",
    "https://", "http://", "https:", "http:/", "https:/\\", "https:\\\\", "HTTPS://",
    "/%09/", "/%5c", "%2f%2f", "/%2f%2f", "/%2F/", "%5c%5c", "/%252f%252f", "%2F%2F",
    "/\t/", "\t//", " //", "/\r\n/", "\r\n//", "\x00//", "/\x0b/",
    "\uff0f\uff0f", "/\uff0f", "\u3031", "\u2215\u2215", "/\u3002/",
    "ftp://", "//user:pass@", "https://good.example@", "http://good.example%40",
]
_SCHEMES = [
    "javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)",
    "java\tscript:alert(1)", "java%0ascript:alert(1)", "javascript%3aalert(1)",
    "data:text/html,<script>alert(1)</script>", "DATA:text/html;base64,PHNjcmlwdD4=",
    "vbscript:msgbox(1)", "file:///etc/passwd", "blob:https://evil.example/x",
    "jar:http://evil.example!/", "view-source:https://evil.example",
]
_HOST_TRICKS = [
    "https://good.example.evil.example/", "https://evil.example#good.example",
    "https://evil.example?good.example", "https://evil.example\\@good.example",
    "https://evil.example/good.example", "https://good.example:443@evil.example",
    "https://evil.example%2F@good.example", "http://[::1]/", "http://0x7f000001/",
    "http://2130706433/", "https://evil\u3002example", "https://good\uff0eexample",
    "https://g\u043eod.example/", "https://xn--gd-5ja.example/", "http://shop.example.evil/",
    "https://evilshop.example/", "https://good.example.", "https:///evil.example",
    "//good.example", "http:good.example",
]

CORPUS = sorted({prefix + target for prefix, target in itertools.product(_PREFIXES, _TARGETS)}
                | set(_SCHEMES) | set(_HOST_TRICKS))
LEGITIMATE = ["/thanks", "/a/b/c?x=1&y=2#done", "/caf%C3%A9", "/search?q=a%20b",
              "https://good.example/thanks", "http://good.example:8080/t",
              "https://www.shop.example/basket", "https://shop.example/"]


def test_the_trick_is_what_is_refused():
    """Without its prefix each target is a plain path of this site, and on
    the allowed host an address like any other: the tests below refuse the
    tricks, not targets that could never have passed."""
    for target in _TARGETS:
        path = "/" + target
        assert safe_redirect(path, ALLOWED) == path
        assert safe_redirect("https://good.example" + path, ALLOWED) == \
            "https://good.example" + path
        assert forward_target(path)[0] == path.split("?", 1)[0]


@pytest.mark.parametrize("payload", CORPUS)
def test_refused_as_redirect(payload):
    with pytest.raises(FieldError):
        safe_redirect(payload, ALLOWED)


@pytest.mark.parametrize("payload", CORPUS)
def test_refused_as_forward(payload):
    with pytest.raises(FieldError):
        forward_target(payload)


@pytest.mark.parametrize("target", LEGITIMATE)
def test_legitimate_redirects_still_work(target):
    assert safe_redirect(target, ALLOWED) == target


def test_legitimate_forwards_still_work():
    assert forward_target("/signup/thanks?from=form") == ("/signup/thanks", "from=form")
    assert forward_target("/caf%C3%A9") == ("/caf\u00c3\u00a9", "")


def test_through_the_middleware(make_app, klaviyo):
    app = make_app(allowed_hosts=["good.example"])
    for payload in CORPUS[:40]:
        answer = app.post("/klaviyoConnect/api/identify",
                          {"email": "a@example.com", "redirect": payload}, status=400)
        assert "Location" not in answer.headers
    assert klaviyo.calls == []


@pytest.mark.parametrize("target", [
    "/%69nternal/admin", "/%2Fmetrics", "/a%2fb", "/%5Cadmin", "/%2e%2e/admin", "/a/../internal",
    "/./metrics", "/a/%2E/b", "/%7Euser", "/%41", "/shop/%30",
])
def test_forwards_written_to_look_like_another_path_are_refused(target):
    """The forwarded request never passed the proxy's path rules."""
    with pytest.raises(FieldError):
        forward_target(target)


def test_forward_prefixes(make_app, klaviyo, inner):
    assert forward_target("/commerce/cart/update-cart", ("/commerce/",))[0] == \
        "/commerce/cart/update-cart"
    assert forward_target("/signup", ("/signup",)) == ("/signup", "")
    for target, prefixes in [("/metrics", ("/commerce/",)), ("/commercial", ("/commerce",)),
                             ("/internal/x", ("/commerce/", "/signup"))]:
        with pytest.raises(FieldError):
            forward_target(target, prefixes)
    app = make_app(forward_prefixes="/commerce/ /signup")
    app.post("/klaviyoConnect/api/identify",
             {"email": "a@example.com", "forward": "commerce/cart/update-cart"})
    assert inner.calls[-1]["path"] == "/commerce/cart/update-cart"
    answer = app.post("/klaviyoConnect/api/identify",
                      {"email": "a@example.com", "forward": "/metrics"}, status=400)
    assert "not allowed" in answer.text
    with pytest.raises(ConfigurationError, match="forward_prefixes"):
        make_app(forward_prefixes=["commerce"])
