"""No post carrying a Klaviyo Connect action is dropped without a trace.

A Craft form posts to its own page with a hidden ``action``. When the
middleware does not act on it — ``action_field`` is off, the body was not
ours to read, or the action is not one we handle — the app gets the post
unchanged, and the log says so once per form path, naming the fix.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from klaviyo_middleware import notices
from klaviyo_middleware.web.action_trace import ActionWatch, action_in


@pytest.fixture(autouse=True)
def _fresh_notices() -> None:
    notices.forget_all()


def warnings_about(caplog: Any, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelname == "WARNING" and text in record.getMessage()]


FORM = {"action": "klaviyoconnect/api/track", "email": "jane@example.com", "list": "AbC123"}


class TestActionFieldOff:
    def test_urlencoded_reaches_the_app_whole_and_is_reported_once(self, make_app, klaviyo,
                                                                   inner, caplog):
        app = make_app()
        for _ in range(3):
            answer = app.post("/newsletter", FORM)
            assert answer.body == (b"inner:/newsletter:action=klaviyoconnect%2Fapi%2Ftrack"
                                   b"&email=jane%40example.com&list=AbC123")
        (warning,) = warnings_about(caplog, "action=klaviyoconnect/api/track")
        assert "/newsletter" in warning and "action_field=True" in warning
        assert "craft_compat=True" in warning
        assert "/actions/klaviyoconnect/api/track" in warning
        # No personal data in the trace.
        assert "jane" not in caplog.text
        assert klaviyo.calls == []

    def test_each_form_path_is_reported(self, make_app, klaviyo, inner, caplog):
        app = make_app()
        app.post("/newsletter", FORM)
        app.post("/footer", FORM)
        assert len(warnings_about(caplog, "action=klaviyoconnect/api/track")) == 2

    def test_multipart_and_json(self, make_app, klaviyo, inner, caplog):
        app = make_app()
        app.post("/a", FORM, upload_files=[("cv", "cv.txt", b"x" * 5000)])
        app.post_json("/b", {"email": "jane@example.com",
                             "action": "/klaviyo-connect-plus/api/track"})
        assert len(warnings_about(caplog, "action=klaviyoconnect/api/track")) == 1
        assert len(warnings_about(caplog, "action=klaviyo-connect-plus/api/track")) == 1

    def test_other_posts_say_nothing(self, make_app, klaviyo, inner, caplog):
        app = make_app()
        app.post("/contact", {"action": "contact/send", "transaction": "klaviyoconnect/api/x"})
        app.post_json("/api", {"note": "action=klaviyoconnect/api/track is how Craft does it"})
        app.post("/upload", b"action=klaviyoconnect/api/track",
                 headers={"Content-Type": "text/plain"})
        assert warnings_about(caplog, "klaviyo") == []

    def test_an_app_that_never_reads_the_body_costs_nothing(self, make_app, klaviyo, caplog):
        # Nothing was read, so nothing is reported: the middleware never
        # reads a body itself with action_field off.
        from webtest import TestApp

        from klaviyo_middleware import KlaviyoMiddleware

        def unread(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("204 No Content", [])
            return []

        app = TestApp(KlaviyoMiddleware(unread, api_key="pk_" + "a" * 34,
                                        api_url="http://127.0.0.1:9", delivery="sync"))
        app.post("/newsletter", FORM, status=204)
        assert warnings_about(caplog, "klaviyo") == []


class TestActionFieldOn:
    def test_an_unknown_action(self, make_app, klaviyo, inner, caplog):
        app = make_app(action_field=True)
        answer = app.post("/newsletter", {**FORM, "action": "klaviyoconnect/api/subscribe"})
        assert answer.body.startswith(b"inner:/newsletter:action=klaviyoconnect%2Fapi%2Fsubscribe")
        (warning,) = warnings_about(caplog, "action=klaviyoconnect/api/subscribe")
        assert "check the action's spelling" in warning

    def test_a_body_too_large_to_read(self, make_app, klaviyo, inner, caplog):
        app = make_app(action_field=True, max_body_size=200)
        body = "action=klaviyoconnect%2Fapi%2Ftrack&email=a%40example.com&pad=" + "x" * 300
        answer = app.post("/newsletter", body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert answer.body == b"inner:/newsletter:" + body.encode()
        (warning,) = warnings_about(caplog, "action=klaviyoconnect/api/track")
        assert "max_body_size" in warning

    def test_a_body_that_cannot_be_parsed(self, make_app, klaviyo, inner, caplog):
        app = make_app(action_field=True)
        body = b"action=klaviyoconnect/api/track&bad=\xff\xfe"
        app.post("/page", body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        (warning,) = warnings_about(caplog, "action=klaviyoconnect/api/track")
        assert "could not parse" in warning


class TestTheWatch:
    @pytest.mark.parametrize("body", [
        b"a=1&action=klaviyoConnect%2Fapi%2FupdateProfile&b=2",
        b'{"email": "x", "action" : "/actions/klaviyoconnect/api/track"}',
        b'--B\r\nContent-Disposition: form-data; name="action"\r\n\r\n'
        b"klaviyo-connect/api/identify\r\n--B--\r\n",
    ])
    def test_found_in_every_body_kind(self, body):
        kind = "json" if body.startswith(b"{") else "multipart" if body[:1] == b"-" \
            else "urlencoded"
        assert action_in(body, kind) in ("klaviyoConnect/api/updateProfile",
                                         "actions/klaviyoconnect/api/track",
                                         "klaviyo-connect/api/identify")

    def test_json_with_escaped_slashes(self):
        assert action_in(b'{"action":"klaviyoconnect\\/api\\/track"}', "json") \
            == "klaviyoconnect/api/track"

    @pytest.mark.parametrize(("body", "kind"), [
        (b"transaction=klaviyoconnect%2Fapi%2Ftrack", "urlencoded"),
        (b'{"note": "action=klaviyoconnect/api/track"}', "json"),
        (b"action=klaviyoconnect%2Fapi%2Ftr", "urlencoded"),
    ])
    def test_not_an_action_field(self, body, kind):
        # The last one is cut short: only a whole value is reported.
        assert action_in(body, kind, complete=body.endswith(b"track")) is None

    def test_found_across_reads_of_any_size(self, caplog):
        body = b"x=" + b"y" * 5000 + b"&action=klaviyoconnect%2Fapi%2Ftrack"
        # Read to the declared length, never past it, as Django does.
        for size in (1, 7, 64, len(body)):
            notices.forget_all()
            caplog.clear()
            watch = ActionWatch(io.BytesIO(body), _logger(), "/p", "off", "urlencoded",
                                len(body))
            read = b"".join(watch.read(size) for _ in range(-(-len(body) // size)))
            assert read == body
            assert len(warnings_about(caplog, "action=klaviyoconnect/api/track")) == 1, size

    def test_readline_iteration_and_other_attributes(self, caplog):
        stream = io.BytesIO(b"first=1\n&action=klaviyoconnect/api/track\n")
        watch = ActionWatch(stream, _logger(), "/p", "off", "urlencoded", None)
        assert list(watch) == [b"first=1\n", b"&action=klaviyoconnect/api/track\n"]
        assert watch.read() == b""
        assert watch.closed is False
        assert len(warnings_about(caplog, "klaviyoconnect/api/track")) == 1


def _logger() -> Any:
    from klaviyo_middleware.redact import get_logger

    return get_logger("klaviyo_middleware.middleware")
