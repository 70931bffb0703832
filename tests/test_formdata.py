"""docs/forms.md: bodies become nested data with PHP bracket semantics, within bounds."""

from __future__ import annotations

import io
import json

import pytest
import webob

from klaviyo_middleware.web.body import BodyError, BodyLimits, nest_pairs, split_key

LIMITS = BodyLimits()


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("email", "a@b.c")], {"email": "a@b.c"}),
        ([("extra[color]", "red")], {"extra": {"color": "red"}}),
        ([("lists[]", "A"), ("lists[]", "B")], {"lists": ["A", "B"]}),
        ([("event[extra][items][0][sku]", "X"), ("event[extra][items][1][sku]", "Y")],
         {"event": {"extra": {"items": [{"sku": "X"}, {"sku": "Y"}]}}}),
        ([("a[1]", "x"), ("a[0]", "y")], {"a": ["y", "x"]}),
        ([("a[0]", "x"), ("a[2]", "y")], {"a": {"0": "x", "2": "y"}}),
        ([("a[01]", "x"), ("a[0]", "y")], {"a": {"01": "x", "0": "y"}}),
        ([("a", "1"), ("a[b]", "2")], {"a": {"b": "2"}}),
        ([("a[b]", "2"), ("a", "1")], {"a": "1"}),
        ([("email", "first"), ("email", "second")], {"email": "second"}),
        ([("a[b]trailing", "v")], {"a": {"b": "v"}}),
        ([("[nameless]", "v")], {}),
        ([("0", "zero")], {"0": "zero"}),
        ([("a[][x]", "1"), ("a[][x]", "2")], {"a": [{"x": "1"}, {"x": "2"}]}),
    ],
)
def test_bracket_semantics(pairs, expected):
    assert nest_pairs(pairs, LIMITS) == expected


def test_split_key():
    assert split_key("a[b][]") == ("a", ["b", ""])
    assert split_key("[x]") is None


def test_depth_limit():
    with pytest.raises(BodyError) as caught:
        nest_pairs([("a" + "[x]" * 10, "v")], BodyLimits(max_depth=10))
    assert caught.value.status == 400
    assert nest_pairs([("a" + "[x]" * 9, "v")], BodyLimits(max_depth=10))


def test_field_limit():
    with pytest.raises(BodyError) as caught:
        nest_pairs([(f"f{i}", "v") for i in range(11)], BodyLimits(max_fields=10))
    assert caught.value.status == 413


class TestThroughTheMiddleware:
    path = "/klaviyoConnect/api/updateProfile"

    def test_json_body_uses_the_same_names(self, app, klaviyo):
        body = {"email": "a@example.com", "extra": {"color": "red"}, "lists": ["L1"],
                "event": {"name": "Viewed", "extra": {"items": [{"sku": "X"}]}}}
        response = app.post_json(self.path, body)
        assert response.json["success"] is True
        assert klaviyo.calls[0].body["data"]["attributes"]["properties"] == {"color": "red"}
        event = klaviyo.bodies("/api/events")[0]["data"]["attributes"]
        assert event["properties"] == {"items": [{"sku": "X"}]}

    def test_multipart_ignores_files(self, app, klaviyo):
        response = app.post(self.path, {"email": "a@example.com", "extra[note]": "hi"},
                            upload_files=[("extra[file]", "f.txt", b"secret file")],
                            headers={"Accept": "application/json"})
        assert response.json["success"] is True
        assert klaviyo.calls[0].body["data"]["attributes"]["properties"] == {"note": "hi"}

    def test_body_too_large_is_413(self, make_app, klaviyo):
        app = make_app(max_body_size=64)
        response = app.post(self.path, {"email": "a@example.com", "extra[x]": "y" * 100},
                            expect_errors=True, headers={"Accept": "application/json"})
        assert response.status_int == 413
        assert response.json["success"] is False
        assert "64 bytes" in response.json["errors"]["form"][0]
        assert klaviyo.calls == []

    def test_too_many_fields_is_413(self, make_app, klaviyo):
        app = make_app(max_fields=5)
        fields = {f"extra[f{i}]": "v" for i in range(6)}
        response = app.post(self.path, {"email": "a@example.com", **fields},
                            expect_errors=True)
        assert response.status_int == 413
        assert klaviyo.calls == []

    def test_too_deep_json_is_400(self, make_app, klaviyo):
        app = make_app(max_depth=3)
        response = app.post_json(self.path, {"email": "a@example.com",
                                             "extra": {"a": {"b": {"c": "d"}}}},
                                 expect_errors=True)
        assert response.status_int == 400
        assert "nested" in response.json["errors"]["form"][0]

    def test_deeply_nested_json_never_crashes(self, app, klaviyo):
        body = "[" * 30_000 + "]" * 30_000  # within max_body_size
        response = app.post(self.path, body, content_type="application/json",
                            expect_errors=True)
        assert response.status_int == 400

    @pytest.mark.parametrize(
        ("body", "content_type", "status"),
        [
            (b"email=\xff\xfe", "application/x-www-form-urlencoded", 400),
            (b"{not json", "application/json", 400),
            (b"[1, 2]", "application/json", 400),
            (b"\xff", "application/json", 400),
            (b"<xml/>", "text/xml", 415),
            (b"--x\r\nbroken", "multipart/form-data; boundary=x", 400),
        ],
    )
    def test_malformed_bodies_get_clear_errors(self, app, klaviyo, body, content_type, status):
        response = app.post(self.path, body, content_type=content_type, expect_errors=True,
                            headers={"Accept": "application/json"})
        assert response.status_int == status
        assert response.json["success"] is False
        assert klaviyo.calls == []

    def _call(self, make_app, **environ):
        make_app()
        request = webob.Request.blank(self.path, method="POST",
                                      content_type="application/x-www-form-urlencoded",
                                      headers={"Accept": "application/json"})
        request.environ.update(environ)
        return request.get_response(make_app.middleware)

    def test_bad_content_length_is_400(self, make_app, klaviyo):
        response = self._call(make_app, CONTENT_LENGTH="abc",
                              **{"wsgi.input": io.BytesIO(b"email=a%40example.com")})
        assert response.status_int == 400
        assert "Content-Length" in response.json["errors"]["form"][0]

    def test_chunked_body_within_limit(self, make_app, klaviyo):
        response = self._call(make_app, CONTENT_LENGTH="",
                              **{"wsgi.input_terminated": True,
                                 "wsgi.input": io.BytesIO(b"email=a%40example.com")})
        assert response.json["success"] is True
        assert json.dumps(klaviyo.calls[0].body).count("a@example.com") == 1

    def test_chunked_body_over_limit_is_413(self, make_app, klaviyo):
        make_app(max_body_size=10)
        request = webob.Request.blank(self.path, method="POST",
                                      content_type="application/x-www-form-urlencoded")
        request.environ.update({"CONTENT_LENGTH": "", "wsgi.input_terminated": True,
                                "wsgi.input": io.BytesIO(b"email=a%40example.com")})
        assert request.get_response(make_app.middleware).status_int == 413
        assert klaviyo.calls == []
