"""docs/configuration.md: bad configuration fails at start-up with a clear message."""

from __future__ import annotations

import pytest

from klaviyo_middleware import ConfigurationError, KlaviyoMiddleware

from support.klaviyo_fake import API_KEY


def inner(environ, start_response):
    start_response("204 No Content", [])
    return []


def test_missing_key_names_the_environment_variable():
    with pytest.raises(ConfigurationError, match="KLAVIYO_PRIVATE_API_KEY"):
        KlaviyoMiddleware(inner)


def test_environment_fallbacks(monkeypatch):
    monkeypatch.setenv("KLAVIYO_PRIVATE_API_KEY", API_KEY)
    monkeypatch.setenv("KLAVIYO_API_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("KLAVIYO_REVISION", "2026-10-15")
    middleware = KlaviyoMiddleware(inner)
    assert middleware.settings.api_key == API_KEY
    assert middleware.settings.api_url == "http://127.0.0.1:9"
    assert middleware.settings.revision == "2026-10-15"


def test_arguments_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("KLAVIYO_PRIVATE_API_KEY", "pk_from_environment")
    middleware = KlaviyoMiddleware(inner, api_key=API_KEY)
    assert middleware.settings.api_key == API_KEY


def test_defaults():
    settings = KlaviyoMiddleware(inner, api_key=API_KEY).settings
    assert settings.api_url == "https://a.klaviyo.com"
    assert settings.revision == "2026-07-15"
    assert settings.delivery == "spool"
    assert settings.action_field is False
    assert settings.allowed_hosts == ()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"api_key": "AbC123"}, "public key"),
        ({"api_key": "pk_abc def"}, "white space"),
        ({"api_url": "a.klaviyo.com"}, "api_url"),
        ({"revision": "latest"}, "revision"),
        ({"delivery": "carrier-pigeon"}, "delivery"),
        ({"action_field": "yes"}, "action_field"),
        ({"phone_region": "XX"}, "phone_region"),
        ({"secret": "short"}, "16 characters"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": (1, 2, 3)}, "timeout"),
        ({"max_body_size": 0}, "max_body_size"),
        ({"max_fields": "10"}, "max_fields"),
        ({"max_depth": -1}, "max_depth"),
        ({"sync_retry_budget": -1}, "sync_retry_budget"),
        ({"allowed_hosts": [1]}, "allowed_hosts"),
        ({"spool_durability": "paranoid"}, "spool_durability"),
        ({"spool_max_size": 0}, "spool_max_size"),
        ({"sender_threads": 0}, "sender_threads"),
        ({"retry_max_age": -1}, "retry_max_age"),
        ({"rate_limit_share": 0}, "rate_limit_share"),
        ({"rate_limit_share": 1.5}, "rate_limit_share"),
        ({"allow_cross_site": "no"}, "allow_cross_site"),
        ({"trusted_proxies": -1}, "trusted_proxies"),
        ({"max_lists": 0}, "max_lists"),
        ({"max_properties": 0}, "max_properties"),
        ({"max_string_length": 0}, "max_string_length"),
        ({"csrf_max_age": -5}, "csrf_max_age"),
        ({"log_personal_data": 1}, "log_personal_data"),
        ({"sms_consent": "always"}, "sms_consent"),
        ({"event_prefix": "x" * 65}, "event_prefix"),
        ({"event_prefix": "Web\n"}, "event_prefix"),
    ],
)
def test_bad_options(options, message):
    options.setdefault("api_key", API_KEY)
    with pytest.raises(ConfigurationError, match=message) as caught:
        KlaviyoMiddleware(inner, **options)
    assert API_KEY not in str(caught.value)


def test_the_app_must_be_callable():
    with pytest.raises(TypeError, match="WSGI application"):
        KlaviyoMiddleware("not an app", api_key=API_KEY)  # type: ignore[arg-type]


def test_allowed_hosts_from_a_string():
    middleware = KlaviyoMiddleware(inner, api_key=API_KEY,
                                   allowed_hosts="a.example.com, .b.example  c.example")
    assert middleware.settings.allowed_hosts == ("a.example.com", ".b.example", "c.example")


def test_phone_region_is_case_insensitive():
    assert KlaviyoMiddleware(inner, api_key=API_KEY, phone_region="gb").settings.phone_region \
        == "GB"


def test_the_key_is_in_no_repr():
    middleware = KlaviyoMiddleware(inner, api_key=API_KEY)
    for text in (repr(middleware), repr(middleware.settings), repr(middleware.delivery),
                 str(vars(middleware.settings).keys())):
        assert API_KEY not in text


def test_spool_path_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KLAVIYO_SPOOL_PATH", str(tmp_path / "env" / "spool.sqlite3"))
    middleware = KlaviyoMiddleware(inner, api_key=API_KEY)
    assert middleware.settings.spool_path == str(tmp_path / "env" / "spool.sqlite3")
    assert (tmp_path / "env" / "spool.sqlite3").exists()
    middleware.close()


def test_default_spool_location(monkeypatch, tmp_path):
    monkeypatch.delenv("KLAVIYO_SPOOL_PATH")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    middleware = KlaviyoMiddleware(inner, api_key=API_KEY)
    assert middleware.settings.spool_path == str(
        tmp_path / "cache" / "klaviyo_middleware" / "spool.sqlite3")
    middleware.close()
