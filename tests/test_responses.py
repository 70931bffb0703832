"""docs/forms.md, "Answers": forward, JSON, redirect, Referer, HTML — and the error answers."""

from __future__ import annotations

import pytest
from requests import ConnectionError as RequestsConnectionError

from klaviyo_middleware import sign_redirect

UPDATE = "/klaviyoConnect/api/updateProfile"
SECRET = "a-long-enough-signing-secret"
VALID = {"email": "a@example.com"}


class TestForward:
    def test_success_runs_the_app_on_the_target_with_the_body(self, app, klaviyo, inner):
        form = {**VALID, "list": "L1", "forward": "/thanks?from=form"}
        response = app.post(UPDATE, form)
        call = inner.calls[-1]
        assert call["method"] == "POST"
        assert call["path"] == "/thanks"
        assert call["query"] == "from=form"
        assert call["body"] == b"email=a%40example.com&list=L1&forward=%2Fthanks%3Ffrom%3Dform"
        assert call["result"]["success"] is True
        assert call["result"]["delivered"] is True
        assert call["errors"] is None
        assert response.body.startswith(b"inner:/thanks:email=")
        assert klaviyo.paths()[0] == "/api/profile-import"

    def test_forward_wins_over_json_and_redirect(self, app, klaviyo, inner):
        response = app.post(UPDATE, {**VALID, "forward": "/done", "redirect": "/elsewhere"},
                            headers={"Accept": "application/json"})
        assert response.headers["X-Inner"] == "yes"
        assert inner.calls[-1]["path"] == "/done"

    def test_json_body_is_re_readable(self, app, klaviyo, inner):
        app.post_json(UPDATE, {**VALID, "forward": "/api/after"})
        assert inner.calls[-1]["body"] == b'{"email": "a@example.com", "forward": "/api/after"}'

    def test_percent_encoded_target_is_decoded_like_a_request_line(self, app, klaviyo, inner):
        app.post(UPDATE, {**VALID, "forward": "/caf%C3%A9/thanks"})
        assert inner.calls[-1]["path"] == "/caf\u00c3\u00a9/thanks"

    def test_invalid_submission_is_forwarded_with_errors(self, app, klaviyo, inner):
        app.post(UPDATE, {"email": "nope", "forward": "/signup"})
        call = inner.calls[-1]
        assert call["path"] == "/signup"
        assert call["errors"] == {"email": ["Enter a valid email address."]}
        assert call["result"]["success"] is False
        assert klaviyo.calls == []

    @pytest.mark.parametrize(
        "target",
        ["//evil.example/x", "https://evil.example/", "/\\evil.example", "https:thanks",
         "/klaviyoConnect/api/identify", "/actions/klaviyo-connect/api/track/",
         "/klaviyoConnect%2Fapi%2Fidentify", "/a\r\nSet-Cookie: x=1", "/%0d%0aX: y",
         "javascript:alert(1)"],
    )
    def test_refused_targets(self, app, klaviyo, inner, target):
        response = app.post(UPDATE, {**VALID, "forward": target},
                            headers={"Accept": "application/json"}, status=400)
        assert list(response.json["errors"]) == ["forward"]
        assert inner.calls == [] and klaviyo.calls == []


class TestJson:
    @pytest.mark.parametrize(
        "headers",
        [{"Accept": "application/json"}, {"Accept": "text/html, application/json;q=0.9"},
         {"X-Requested-With": "XMLHttpRequest"}],
    )
    def test_json_wanted_by_headers(self, app, klaviyo, headers):
        response = app.post(UPDATE, {**VALID, "redirect": "/next"}, headers=headers)
        assert response.status_int == 200
        assert response.content_type == "application/json"
        assert response.json["success"] is True
        assert response.headers["Cache-Control"] == "no-store"

    def test_json_body_gets_json(self, app, klaviyo):
        response = app.post_json(UPDATE, VALID)
        assert response.json["success"] is True
        assert len(response.json["submission_id"]) == 32

    def test_json_error(self, app, klaviyo):
        response = app.post_json(UPDATE, {"email": ""}, status=400)
        assert response.json == {"success": False,
                                 "errors": {"email": ["Enter your email address."]}}


class TestRedirect:
    def test_relative_path(self, app, klaviyo):
        response = app.post(UPDATE, {**VALID, "redirect": "/thanks?x=1#top"})
        assert response.status_int == 303
        # Relative, as written: the browser resolves it against the page it
        # asked for, never against a Host header the client chose.
        assert response.headers["Location"] == "/thanks?x=1#top"

    def test_a_forged_host_header_never_reaches_location(self, app, klaviyo):
        response = app.post(UPDATE, {**VALID, "redirect": "/thanks"},
                            headers={"Host": "evil.example"})
        assert response.headers["Location"] == "/thanks"

    def test_absolute_url_on_allowed_hosts(self, make_app, klaviyo):
        app = make_app(allowed_hosts=["shop.example.com", ".example.org"])
        for target in ["https://shop.example.com/thanks", "https://www.example.org/t",
                       "http://example.org:8080/t"]:
            response = app.post(UPDATE, {**VALID, "redirect": target})
            assert (response.status_int, response.headers["Location"]) == (303, target)

    @pytest.mark.parametrize(
        "target",
        ["//evil.example", "/\\evil.example", "https://evil.example/",
         "https://shop.example.com.evil.example/", "https://shop.example.com@evil.example/",
         "javascript:alert(1)", "data:text/html,hi", "/ok\r\nLocation: //evil",
         "/\t/evil.example", "ftp://shop.example.com/"],
    )
    def test_refused(self, make_app, klaviyo, target):
        app = make_app(allowed_hosts=["shop.example.com"])
        response = app.post(UPDATE, {**VALID, "redirect": target}, status=400)
        assert "Redirects may only go to a page on this site." in response.text or \
            "not allowed" in response.text
        assert klaviyo.calls == []

    def test_signed_redirect_required_when_secret_set(self, make_app, klaviyo):
        app = make_app(secret=SECRET)
        response = app.post(UPDATE, {**VALID, "redirect": "/thanks"}, status=400)
        assert "not signed" in response.text
        response = app.post(UPDATE, {**VALID, "redirect": sign_redirect("/thanks", SECRET)})
        assert response.headers["Location"] == "/thanks"

    def test_tampered_signature_refused(self, make_app, klaviyo):
        app = make_app(secret=SECRET)
        signed = sign_redirect("/thanks", SECRET)
        for value in [signed[:64] + "/elsewhere", sign_redirect("/thanks", "other" * 4),
                      signed[:64]]:
            app.post(UPDATE, {**VALID, "redirect": value}, status=400)
        assert klaviyo.calls == []

    def test_signed_values_still_pass_the_safety_rules(self, make_app, klaviyo):
        app = make_app(secret=SECRET)
        app.post(UPDATE, {**VALID, "redirect": sign_redirect("//evil.example", SECRET)},
                 status=400)


class TestRefererAndPage:
    def test_same_origin_referer(self, app, klaviyo):
        response = app.post(UPDATE, VALID, headers={"Referer": "http://localhost/signup?x=1"})
        assert response.status_int == 303
        assert response.headers["Location"] == "http://localhost/signup?x=1"

    @pytest.mark.parametrize("referer", ["https://localhost/signup", "http://evil.example/",
                                         "http://localhost:8080/x", "not a url"])
    def test_other_origin_referer_gets_the_page(self, make_app, klaviyo, referer):
        # Cross-site posts are refused by default; allowed here to reach the page.
        app = make_app(allow_cross_site=True)
        response = app.post(UPDATE, VALID, headers={"Referer": referer})
        assert response.status_int == 200
        assert "Thank you" in response.text

    def test_html_confirmation(self, app, klaviyo):
        response = app.post(UPDATE, VALID)
        assert response.status_int == 200
        assert response.content_type == "text/html"
        assert "Your details have been saved." in response.text

    def test_html_errors_are_escaped(self, app, klaviyo):
        response = app.post(UPDATE, {"email": "<script>alert(1)</script>",
                                     "redirect": "<img src=x onerror=alert(1)>"}, status=400)
        assert "<script>" not in response.text and "<img" not in response.text
        assert "Enter a valid email address." in response.text
        assert response.content_type == "text/html"


class TestKlaviyoFailures:
    def test_unreachable_klaviyo_is_503_not_500(self, app, klaviyo):
        klaviyo.fail("/api/profile-import",
                     exception=RequestsConnectionError("connection refused"))
        response = app.post(UPDATE, VALID, headers={"Accept": "application/json"}, status=503)
        assert response.headers["Retry-After"] == "60"
        assert response.json["success"] is False
        assert "try again" in response.json["errors"]["form"][0]

    def test_klaviyo_5xx_html_page_is_503(self, app, klaviyo):
        klaviyo.fail("/api/profile-import", 502, body="<html>Bad gateway</html>",
                     headers={"Content-Type": "text/html"})
        response = app.post(UPDATE, VALID, status=503)
        assert "Bad gateway" not in response.text

    def test_klaviyo_rejecting_a_value_points_at_the_field(self, app, klaviyo):
        klaviyo.fail("/api/profile-import", 400, body={"errors": [{
            "id": "x", "status": 400, "code": "invalid", "title": "Invalid input.",
            "detail": "Invalid phone number a@example.com",
            "source": {"pointer": "/data/attributes/phone_number"}}]})
        response = app.post(UPDATE, VALID, headers={"Accept": "application/json"}, status=400)
        assert response.json["errors"] == {
            "phone_number": ["This value was not accepted. Please check it."]}
        # Klaviyo's detail can echo personal data: it is not shown.
        assert "a@example.com" not in response.text

    def test_failure_with_forward_reaches_the_app_with_errors(self, app, klaviyo, inner):
        klaviyo.fail("/api/profile-import", 503)
        app.post(UPDATE, {**VALID, "forward": "/signup"})
        assert inner.calls[-1]["errors"]["form"][0].startswith("We could not save")
