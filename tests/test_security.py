"""Cross-site posts, CSRF tokens, abuse limits, and secrets kept out of sight."""

from __future__ import annotations

import logging

import pytest
from requests import ConnectionError as RequestsConnectionError
from requests import ReadTimeout

from klaviyo_middleware import ConfigurationError, csrf_token
from klaviyo_middleware.web.security import (
    ClientRateLimiter,
    client_address,
    client_key,
    parse_rate,
)

from support.klaviyo_fake import API_KEY

UPDATE = "/klaviyoConnect/api/updateProfile"
JSON = {"Accept": "application/json"}
VALID = {"email": "a@example.com"}
SECRET = "a-long-enough-signing-secret"


class TestCrossSite:
    @pytest.mark.parametrize(
        "headers",
        [{"Origin": "https://evil.example"}, {"Origin": "null"},
         {"Sec-Fetch-Site": "cross-site"},
         {"Referer": "https://evil.example/page"},
         {"Origin": "https://localhost.evil.example"}],
    )
    def test_refused_with_403(self, app, klaviyo, headers):
        answer = app.post(UPDATE, VALID, headers={**JSON, **headers}, status=403)
        assert answer.json["success"] is False
        assert klaviyo.calls == []

    @pytest.mark.parametrize(
        "headers",
        [{}, {"Origin": "http://localhost"}, {"Origin": "https://localhost"},
         {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "same-site"},
         {"Referer": "http://localhost/signup"}, {"Origin": "https://shop.example"}],
    )
    def test_this_site_and_allowed_hosts_pass(self, make_app, klaviyo, headers):
        app = make_app(allowed_hosts=["shop.example"])
        assert app.post(UPDATE, VALID, headers={**JSON, **headers}).json["success"]

    def test_origin_wins_over_a_forged_looking_referer(self, app, klaviyo):
        app.post(UPDATE, VALID, headers={**JSON, "Origin": "https://evil.example",
                                         "Referer": "http://localhost/"}, status=403)

    def test_can_be_allowed(self, make_app, klaviyo):
        app = make_app(allow_cross_site=True)
        assert app.post(UPDATE, VALID, headers={**JSON, "Origin": "https://evil.example"}
                        ).json["success"]

    def test_refused_before_the_body_is_read_or_forwarded(self, app, klaviyo, inner):
        app.post(UPDATE, {**VALID, "forward": "/next"}, status=403,
                 headers={"Origin": "https://evil.example"})
        assert inner.calls == []


class TestCsrfToken:
    def session(self, environ):
        return environ.get("HTTP_COOKIE", "").removeprefix("session=") or None

    def test_valid_token_for_the_session(self, make_app, klaviyo):
        app = make_app(secret=SECRET, csrf_session=self.session)
        token = csrf_token(SECRET, "s-123")
        answer = app.post(UPDATE, {**VALID, "csrf_token": token}, headers={
            **JSON, "Cookie": "session=s-123"})
        assert answer.json["success"] is True

    @pytest.mark.parametrize(
        ("token", "cookie"),
        [(None, "session=s-123"), ("garbage", "session=s-123"),
         (csrf_token(SECRET, "other-session"), "session=s-123"),
         (csrf_token(SECRET, "s-123", now=1_000_000), "session=s-123"),
         (csrf_token("another-secret-entirely", "s-123"), "session=s-123"),
         (csrf_token(SECRET, "s-123"), "")],
    )
    def test_refused(self, make_app, klaviyo, token, cookie):
        app = make_app(secret=SECRET, csrf_session=self.session)
        form = {**VALID, **({"csrf_token": token} if token else {})}
        answer = app.post(UPDATE, form, headers={**JSON, "Cookie": cookie}, status=403)
        assert list(answer.json["errors"]) == ["csrf_token"]
        assert klaviyo.calls == []

    def test_needs_a_secret(self, make_app):
        with pytest.raises(ConfigurationError, match="secret"):
            make_app(csrf_session=self.session)


class TestAbuseControls:
    def test_honeypot_looks_like_success_but_sends_nothing(self, make_app, klaviyo):
        app = make_app(honeypot="website")
        answer = app.post(UPDATE, {**VALID, "website": "http://spam.example"}, headers=JSON)
        assert answer.json["success"] is True
        assert klaviyo.calls == []
        assert app.post(UPDATE, {**VALID, "website": ""}, headers=JSON).json["success"]
        assert klaviyo.paths() == ["/api/profile-import"]

    def test_client_rate_limit(self, make_app, klaviyo):
        app = make_app(client_rate_limit="3/minute")
        env = {"REMOTE_ADDR": "203.0.113.9"}
        for _ in range(3):
            app.post(UPDATE, VALID, headers=JSON, extra_environ=env)
        answer = app.post(UPDATE, VALID, headers=JSON, extra_environ=env, status=429)
        assert 1 <= int(answer.headers["Retry-After"]) <= 60
        # Another client is not affected.
        app.post(UPDATE, VALID, headers=JSON, extra_environ={"REMOTE_ADDR": "203.0.113.10"})
        assert klaviyo.paths().count("/api/profile-import") == 4

    def test_the_default_budget_limits_public_addresses_only(self, app, klaviyo, caplog):
        # A proxy's private address, or none at all, is every visitor at
        # once: never limited by default.
        for address in ("127.0.0.1", "10.0.0.2", "fd00::1", None):
            env = {"REMOTE_ADDR": address} if address else {}
            for _ in range(130):
                app.post(UPDATE, VALID, headers=JSON, extra_environ=env)
        # A client on the internet is: 120 a minute.
        env = {"REMOTE_ADDR": "93.184.216.34"}
        for _ in range(120):
            app.post(UPDATE, VALID, headers=JSON, extra_environ=env)
        app.post(UPDATE, VALID, headers=JSON, extra_environ=env, status=429)
        assert "set trusted_proxies" in caplog.text

    def test_off(self, make_app, klaviyo):
        app = make_app(client_rate_limit="off")
        for _ in range(130):
            app.post(UPDATE, VALID, headers=JSON, extra_environ={"REMOTE_ADDR": "93.184.216.34"})

    @pytest.mark.parametrize(("first", "second"), [
        # One /64 is one subscriber, whichever address it uses.
        ("2a00:1450:4001:81b::200e", "2a00:1450:4001:81b:ffff:1:2:3"),
        ("[2a00:1450:4001:81b::1]:443", "2a00:1450:4001:81b::2%eth0"),
        # A mapped IPv4 address is that IPv4 address.
        ("::ffff:93.184.216.34", "93.184.216.34"),
        ("93.184.216.34:5678", "93.184.216.34"),
    ])
    def test_one_client_however_its_address_is_written(self, make_app, klaviyo, first, second):
        app = make_app(client_rate_limit="2/minute")
        app.post(UPDATE, VALID, headers=JSON, extra_environ={"REMOTE_ADDR": first})
        app.post(UPDATE, VALID, headers=JSON, extra_environ={"REMOTE_ADDR": second})
        app.post(UPDATE, VALID, headers=JSON, extra_environ={"REMOTE_ADDR": first}, status=429)

    def test_the_ipv6_prefix_is_configurable(self, make_app, klaviyo):
        app = make_app(client_rate_limit="1/minute", client_ipv6_prefix=128)
        for address in ("2a00:1450:4001:81b::1", "2a00:1450:4001:81b::2"):
            app.post(UPDATE, VALID, headers=JSON, extra_environ={"REMOTE_ADDR": address})
        assert client_key("2a00:1450:4001:81b::1", 56) == "2a00:1450:4001:800::/56"
        with pytest.raises(ConfigurationError, match="client_ipv6_prefix"):
            make_app(client_ipv6_prefix=129)

    def test_trusted_proxies(self):
        environ = {"REMOTE_ADDR": "10.0.0.2",
                   "HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.7, 10.0.0.1"}
        assert client_address(environ, 0) == "10.0.0.2"
        assert client_address(environ, 1) == "10.0.0.1"
        assert client_address(environ, 2) == "198.51.100.7"
        assert client_address({"REMOTE_ADDR": "10.0.0.2"}, 2) == "10.0.0.2"

    def test_limiter_memory_is_bounded_and_windows_slide(self):
        limiter = ClientRateLimiter(limit=2, period=10, max_clients=100)
        for number in range(1000):
            limiter.retry_after(f"client-{number}", now=0)
        assert len(limiter._seen) == 100
        assert limiter.retry_after("x", now=0) == 0 and limiter.retry_after("x", now=1) == 0
        assert limiter.retry_after("x", now=2) == 8
        assert limiter.retry_after("x", now=10.5) == 0

    @pytest.mark.parametrize("value", ["10", "ten/minute", "0/second", "5/fortnight"])
    def test_bad_rates(self, value, make_app):
        with pytest.raises(ValueError):
            parse_rate(value)
        with pytest.raises(ConfigurationError, match="client_rate_limit"):
            make_app(client_rate_limit=value)

    def test_list_cap(self, make_app, klaviyo):
        app = make_app(max_lists=2)
        answer = app.post(UPDATE, {**VALID, "lists[]": ["A1", "B2", "C3"]}, headers=JSON,
                          status=400)
        assert answer.json["errors"] == {"lists": ["Choose at most 2 lists."]}

    def test_refuse_email_hook(self, make_app, klaviyo):
        disposable = {"mailinator.com", "10minutemail.com"}
        app = make_app(refuse_email=lambda email: email.rsplit("@", 1)[1] in disposable)
        answer = app.post(UPDATE, {"email": "x@mailinator.com"}, headers=JSON, status=400)
        assert answer.json["errors"] == {"email": ["Use another email address."]}
        app = make_app(refuse_email=lambda email: "Work addresses only." if
                       email.endswith("@gmail.com") else None)
        answer = app.post(UPDATE, {"email": "x@gmail.com"}, headers=JSON, status=400)
        assert answer.json["errors"] == {"email": ["Work addresses only."]}
        assert app.post(UPDATE, VALID, headers=JSON).json["success"]

    def test_a_broken_refuse_email_hook_is_not_a_500(self, make_app, klaviyo):
        app = make_app(refuse_email=lambda email: 1 / 0)
        assert app.post(UPDATE, VALID, headers=JSON).json["success"]


class TestResourceLimits:
    def test_string_length(self, make_app, klaviyo):
        app = make_app(max_string_length=1000, max_body_size=10**6)
        answer = app.post(UPDATE, {**VALID, "extra[bio]": "x" * 1001}, headers=JSON, status=413)
        assert "1000 characters" in answer.json["errors"]["form"][0]
        app.post_json(UPDATE, {**VALID, "extra": {"bio": "x" * 1001}}, status=413)

    def test_property_count(self, make_app, klaviyo):
        app = make_app(max_properties=5)
        many = {f"extra[p{n}]": "v" for n in range(6)}
        answer = app.post(UPDATE, {**VALID, **many}, headers=JSON, status=400)
        assert list(answer.json["errors"]) == ["extra"]
        events = {f"event[extra][p{n}]": "v" for n in range(6)}
        answer = app.post(UPDATE, {**VALID, "event[name]": "E", **events}, headers=JSON,
                          status=400)
        assert list(answer.json["errors"]) == ["event[extra]"]


PERSONAL = ["sarah.secret@example.com", "+442079460958", "020 7946 0958"]


class TestSecretsAndPersonalData:
    """All log output through failure scenarios: no key, email or phone number."""

    def scenarios(self, make_app, klaviyo, tmp_path):
        form = {"email": PERSONAL[0], "phone_number": PERSONAL[2], "list": "L1",
                "event[name]": "E"}
        detail = {"errors": [{"id": "x", "status": 400, "code": "invalid",
                              "title": "Invalid input.",
                              "detail": f"Bad {PERSONAL[0]} {PERSONAL[1]} key {API_KEY}",
                              "source": {"pointer": "/data/attributes/email"}}]}
        app = make_app(phone_region="GB")
        answers = []
        klaviyo.fail("/api/profile-import", 400, body=detail)
        answers.append(app.post(UPDATE, form, status="*"))
        klaviyo.fail("/api/profile-import", 503, body=detail)
        answers.append(app.post(UPDATE, form, headers=JSON, status="*"))
        klaviyo.fail("/api/profile-import", exception=ReadTimeout(f"timeout {API_KEY}"))
        answers.append(app.post(UPDATE, form, status="*"))
        klaviyo.fail("/api/profile-import", exception=RequestsConnectionError(PERSONAL[0]))
        answers.append(app.post(UPDATE, form, headers=JSON, status="*"))
        answers.append(app.post(UPDATE, {**form, "email": "bad " + PERSONAL[0]}, status="*"))
        answers.append(app.post(UPDATE, b"\xff" + PERSONAL[0].encode(), status="*",
                                content_type="application/json"))
        # The spool, dead-lettering a submission with Klaviyo's detail.
        spool_app = make_app(delivery="spool", spool_path=str(tmp_path / "s.sqlite3"),
                             phone_region="GB")
        klaviyo.fail("/api/profile-import", 400, body=detail)
        answers.append(spool_app.post(UPDATE, form, status="*"))
        assert make_app.middleware.flush(10)
        return answers, make_app.middleware

    def test_nothing_leaks(self, make_app, klaviyo, tmp_path, caplog):
        with caplog.at_level(logging.DEBUG):
            answers, middleware = self.scenarios(make_app, klaviyo, tmp_path)
        assert len(caplog.records) >= 5
        texts = [caplog.text, *(answer.text for answer in answers),
                 repr(middleware), repr(middleware.settings), repr(middleware.delivery),
                 repr(middleware.delivery.spool)]  # type: ignore[attr-defined]
        texts += [str(record.exc_info[1]) for record in caplog.records if record.exc_info]
        for text in texts:
            assert API_KEY not in text
            for value in PERSONAL:
                if text is not caplog.text and value == PERSONAL[0]:
                    continue  # a visitor may see their own address in their own answer
                assert value not in text, value

    def test_personal_data_logging_is_opt_in(self, make_app, klaviyo, caplog):
        app = make_app(log_personal_data=True)
        try:
            klaviyo.fail("/api/profile-import", 503)
            with caplog.at_level(logging.DEBUG):
                logging.getLogger("klaviyo_middleware.middleware")
                from klaviyo_middleware.redact import get_logger
                get_logger("klaviyo_middleware.test").warning("for %s", PERSONAL[0])
                app.post(UPDATE, VALID, status=503)
            assert PERSONAL[0] in caplog.text
        finally:
            make_app(log_personal_data=False)


def test_csrf_token_with_unicode_digits_is_refused_not_a_crash(make_app, klaviyo):
    app = make_app(secret=SECRET, csrf_session=lambda environ: "s")
    app.post(UPDATE, {**VALID, "csrf_token": "\u00b9\u00b2.abc"}, headers=JSON, status=403)
