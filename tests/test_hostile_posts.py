"""Posts built to break the parser: each gets a clear 4xx, never a 500 or a stall.

Every case here once made the middleware answer 500, hold a process for
seconds, or accept data Klaviyo cannot take.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from klaviyo_middleware import csrf_token, middleware, sign_redirect
from klaviyo_middleware.web.fields import MAX_NUMBER

UPDATE = "/klaviyoConnect/api/updateProfile"
JSON = {"Accept": "application/json"}
VALID = {"email": "a@example.com"}
SECRET = "a-long-enough-signing-secret"


def multipart(*parts: bytes, boundary: str = "b0undary",
              content_type: str = "multipart/form-data") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f"{content_type}; boundary={boundary}"


def field(name: bytes, value: bytes, header: bytes | None = None) -> bytes:
    disposition = header or b'Content-Disposition: form-data; name="' + name + b'"'
    return disposition + b"\r\n\r\n" + value


class TestNumbers:
    @pytest.mark.parametrize("value", ["1e1000000", "1e5000", "1e309", "-1e16",
                                       "9" * 41, str(MAX_NUMBER)])
    def test_huge_event_values_are_left_out_before_any_arithmetic(self, app, klaviyo, value):
        # A hidden field the visitor cannot correct: the event goes without it.
        app.post(UPDATE, {**VALID, "event[name]": "Ordered", "event[value]": value},
                 headers=JSON, status=200)
        (body,) = klaviyo.bodies("/api/events")
        assert "value" not in body["data"]["attributes"]

    @pytest.mark.parametrize("value", ["9.99", "1e14", "-3", "0e999999"])
    def test_ordinary_values_still_work(self, app, klaviyo, value):
        app.post(UPDATE, {**VALID, "event[name]": "Ordered", "event[value]": value})
        (body,) = klaviyo.bodies("/api/events")
        assert body["data"]["attributes"]["value"] == json.loads(
            json.dumps(float(value) if "." in value else int(float(value))))

    @pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999",
                                         "123456789012345678901234567890"])
    @pytest.mark.parametrize("where", ["event", "extra"])
    def test_json_numbers_klaviyo_cannot_store_are_refused(self, app, klaviyo, literal, where):
        inner = (f'"event": {{"name": "Ordered", "value": {literal}}}' if where == "event"
                 else f'"extra": {{"n": {literal}}}')
        body = ('{"email": "a@example.com", ' + inner + "}").encode()
        answer = app.post(UPDATE, body, content_type="application/json", status=400)
        assert answer.json["success"] is False
        assert klaviyo.calls == []


class TestBrackets:
    def test_an_index_of_thousands_of_digits_is_a_name(self, app, klaviyo):
        key = "extra[" + "9" * 4301 + "]"
        app.post(UPDATE, {**VALID, key: "x", "lists[" + "1" * 5000 + "]": "L1"})
        (body,) = klaviyo.bodies("/api/profile-import")
        assert body["data"]["attributes"]["properties"] == {"9" * 4301: "x"}

    def test_with_action_field_the_site_keeps_working(self, make_app, inner, klaviyo):
        app = make_app(action_field=True)
        key = "comment[" + "9" * 4301 + "]"
        app.post("/contact", {key: "hello", "action": "contact/send"})
        assert inner.calls[-1]["path"] == "/contact"


class TestUrls:
    @pytest.mark.parametrize("target", ["http://[x", "http://[evil.com]/", "https://[::1",
                                        "http://shop.example.com:99999999999/",
                                        "http://shop.example.com:port/"])
    def test_unparseable_redirects_are_field_errors(self, make_app, klaviyo, target):
        app = make_app(allowed_hosts=["shop.example.com"])
        answer = app.post(UPDATE, {**VALID, "redirect": target}, headers=JSON, status=400)
        assert list(answer.json["errors"]) == ["redirect"]

    def test_an_unparseable_referer_is_ignored(self, app, klaviyo):
        answer = app.post(UPDATE, VALID, headers={"Referer": "http://[x/",
                                                   "Origin": "http://localhost"})
        assert answer.status_int == 200 and "Location" not in answer.headers

    def test_a_signed_value_with_non_ascii_in_its_digest_is_refused(self, make_app, klaviyo):
        app = make_app(secret=SECRET)
        forged = "é" * 64 + "/thanks"
        answer = app.post(UPDATE, {**VALID, "redirect": forged}, headers=JSON, status=400)
        assert answer.json["errors"] == {"redirect": ["The redirect is not signed by this site."]}
        good = sign_redirect("/thanks", SECRET)
        assert app.post(UPDATE, {**VALID, "redirect": good}).status_int == 303

    @pytest.mark.parametrize("host", ["[::1]:8000", "[::1]", "[2001:db8::1]:443"])
    def test_an_ipv6_site_accepts_its_own_forms(self, app, klaviyo, host):
        origin = "http://" + host
        answer = app.post(UPDATE, VALID, headers={**JSON, "Host": host, "Origin": origin})
        assert answer.json["success"] is True

    def test_an_ipv6_site_still_refuses_other_sites(self, app, klaviyo):
        app.post(UPDATE, VALID, headers={**JSON, "Host": "[::1]:8000",
                                         "Origin": "http://[::2]:8000"}, status=403)

    def test_an_ipv6_referer_of_the_same_site_is_followed(self, app, klaviyo):
        answer = app.post(UPDATE, VALID, headers={"Host": "[::1]:8000",
                                                  "Referer": "http://[::1]:8000/signup"})
        assert answer.headers["Location"] == "http://[::1]:8000/signup"


class TestMultipart:
    def post(self, app: Any, body: bytes, content_type: str, status: int | str = "*") -> Any:
        return app.post(UPDATE, body, headers={**JSON, "Content-Type": content_type},
                        status=status)

    def test_a_well_formed_body_is_read(self, app, klaviyo):
        body, kind = multipart(field(b"email", b"a@example.com"),
                               field(b"first_name", "Zoë".encode()))
        assert self.post(app, body, kind).json["success"] is True
        (sent,) = klaviyo.bodies("/api/profile-import")
        assert sent["data"]["attributes"]["first_name"] == "Zoë"

    def test_a_charset_parameter_on_the_content_type(self, app, klaviyo):
        body, kind = multipart(field(b"email", b"a@example.com"))
        assert self.post(app, body, kind + "; charset=utf-8").json["success"] is True

    @pytest.mark.parametrize("header", [
        b"Content-Disposition: form-data",
        b"Content-Disposition: form-data; name*=UTF-8''email",
        b'Content-Disposition: form-data; name=""',
        b"Content-Type: text/plain",
    ])
    def test_a_part_without_a_name_is_refused(self, app, klaviyo, header):
        body, kind = multipart(field(b"email", b"a@example.com"),
                               field(b"", b"x", header=header))
        answer = self.post(app, body, kind, status=400)
        assert answer.json["success"] is False
        assert klaviyo.calls == []

    def test_deeply_nested_multipart_mixed(self, app, klaviyo):
        inner = b"x"
        for level in range(400):
            boundary = f"n{level}".encode()
            inner = (b"--" + boundary + b"\r\nContent-Type: multipart/mixed; boundary=n"
                     + str(level - 1).encode() + b"\r\n\r\n" + inner + b"\r\n--"
                     + boundary + b"--")
        body, kind = multipart(field(b"email", b"a@example.com"),
                               b'Content-Disposition: form-data; name="note"\r\n'
                               b"Content-Type: multipart/mixed; boundary=n399\r\n\r\n" + inner)
        answer = self.post(app, body, kind)
        assert answer.status_int in (200, 400, 413)

    def test_non_utf8_text_is_refused_like_other_bodies(self, app, klaviyo):
        body, kind = multipart(field(b"email", b"a@example.com"),
                               field(b"first_name", "Zoë".encode("latin-1")))
        answer = self.post(app, body, kind, status=400)
        assert answer.json["errors"] == {"form": ["The submission is not valid UTF-8."]}
        assert klaviyo.calls == []

    def test_files_are_still_ignored(self, app, klaviyo):
        body, kind = multipart(
            field(b"email", b"a@example.com"),
            b'Content-Disposition: form-data; name="cv"; filename="cv.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n\xff\xfe\x00binary")
        assert self.post(app, body, kind).json["success"] is True

    @pytest.mark.parametrize("body", [b"", b"--b0undary\r\n", b"garbage", b"--b0undary--"])
    def test_truncated_bodies(self, app, klaviyo, body):
        answer = self.post(app, body, "multipart/form-data; boundary=b0undary")
        assert answer.status_int == 400

    def test_no_boundary(self, app, klaviyo):
        answer = self.post(app, b"x", "multipart/form-data", status=400)
        assert "boundary" in answer.json["errors"]["form"][0]


class TestCsrf:
    def test_a_timestamp_of_thousands_of_digits_is_refused(self, make_app, klaviyo):
        app = make_app(secret=SECRET, csrf_session=lambda environ: "session-1")
        token = "9" * 5000 + "." + "0" * 64
        app.post(UPDATE, {**VALID, "csrf_token": token}, status=403)
        good = csrf_token(SECRET, "session-1")
        app.post(UPDATE, {**VALID, "csrf_token": good}, status=200)

    def test_a_non_ascii_digest_is_refused(self, make_app, klaviyo):
        app = make_app(secret=SECRET, csrf_session=lambda environ: "session-1")
        issued = csrf_token(SECRET, "session-1").split(".")[0]
        app.post(UPDATE, {**VALID, "csrf_token": issued + ".é"}, status=403)


class TestAnythingUnexpected:
    """The one catch-all: an exception no parser foresaw becomes a 400."""

    def test_an_injected_failure_while_reading_is_a_400(self, app, klaviyo, monkeypatch):
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a corner case nobody foresaw")

        monkeypatch.setattr(middleware, "build_submission", broken)
        answer = app.post(UPDATE, VALID, headers=JSON, status=400)
        assert answer.json == {"success": False, "errors": {"form": [middleware.UNREADABLE]}}
        html = app.post(UPDATE, VALID, status=400)
        assert "could not be read" in html.text and "nobody foresaw" not in html.text
        assert klaviyo.calls == []

    def test_a_mapping_with_a_bug_is_a_400(self, make_app, klaviyo):
        def mapping(request: Any) -> dict[str, Any]:
            return {"email": "a@example.com"}["missing"]  # type: ignore[no-any-return]

        app = make_app(mappings={"buggy": mapping})
        app.post(UPDATE, {**VALID, "klaviyoProfileMapping": "buggy"}, status=400)

    def test_with_action_field_an_unreadable_form_goes_to_the_app(
            self, make_app, inner, klaviyo, monkeypatch):
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr(middleware, "parse_body", broken)
        app = make_app(action_field=True)
        app.post("/contact", {"action": "klaviyoConnect/api/updateProfile", **VALID})
        assert inner.calls[-1]["body"].startswith(b"action=")
        assert klaviyo.calls == []
