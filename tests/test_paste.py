"""PasteDeploy: ``use = egg:klaviyo_middleware#main`` with string options."""

from __future__ import annotations

from pathlib import Path

import pytest
from paste.deploy import loadapp
from webtest import TestApp

from klaviyo_middleware import ConfigurationError, KlaviyoMiddleware
from klaviyo_middleware.paste import filter_app_factory

CONFIGS = Path(__file__).parent / "sample_configs"


def load(name: str):
    return loadapp(f"config:{name}", relative_to=str(CONFIGS))


def test_pipeline_converts_every_string_option():
    middleware = load("pipeline.ini")
    assert isinstance(middleware, KlaviyoMiddleware)
    settings = middleware.settings
    assert settings.allowed_hosts == ("shop.example.com", ".example.org")
    assert settings.action_field is True
    assert settings.timeout == (2.0, 5.0)
    assert settings.limits.max_body_size == 4096
    assert settings.limits.max_fields == 50
    assert settings.limits.max_depth == 6
    assert settings.sync_retry_budget == 0.0
    assert settings.phone_region == "GB"
    assert settings.custom_source == "Paste form"
    assert settings.event_prefix == "Website:"  # ini values are stripped
    assert settings.sms_consent == "with_phone"


def test_pipeline_serves_and_intercepts(klaviyo):
    app = TestApp(load("pipeline.ini"))
    assert app.get("/page").text == "hello from the inner app /page"
    response = app.post("/any/page", {"action": "klaviyoConnect/api/updateProfile",
                                      "email": "a@example.com", "phone_number": "020 7946 0958",
                                      "list": "L1"},
                        headers={"Accept": "application/json"})
    assert response.json["success"] is True
    body = klaviyo.bodies("/api/profile-import")[0]
    assert body["data"]["attributes"]["phone_number"] == "+442079460958"
    subscribe = klaviyo.bodies("/api/profile-subscription-bulk-create-jobs")[0]
    assert subscribe["data"]["attributes"]["custom_source"] == "Paste form"


def test_unknown_option_fails_at_load_time():
    with pytest.raises(ConfigurationError, match="action_feild"):
        load("filter_with_typo.ini")


@pytest.mark.parametrize(("key", "suggestion"), [
    ("allowed-hosts", "allowed_hosts"), ("KLAVIYO_SECRET", "secret"),
    ("klaviyo.api_url", "api_url"), ("actoin_field", "action_field")])
def test_unknown_key_suggests_the_option_meant(key, suggestion):
    with pytest.raises(ConfigurationError, match=f"did you mean '{suggestion}'"):
        filter_app_factory(lambda e, s: [], {}, api_key="pk_test_0123456789abcdef",
                           **{key: "x"})


def test_bad_boolean_fails_at_load_time():
    with pytest.raises(ConfigurationError, match="action_field must be true or false"):
        load("bad_bool.ini")


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_fields": "many"}, "whole number"), ({"timeout": "soon"}, "number"),
     ({"sync_retry_budget": "x"}, "number")],
)
def test_factory_conversion_errors(options, message):
    with pytest.raises(ConfigurationError, match=message):
        filter_app_factory(lambda e, s: [], {}, api_key="pk_test_0123456789abcdef", **options)


def test_factory_shares_the_class_docs():
    assert "allowed_hosts" in (filter_app_factory.__doc__ or "")


def test_factory_converts_spool_options(tmp_path):
    middleware = filter_app_factory(
        lambda e, s: [], {}, api_key="pk_test_0123456789abcdef",
        spool_path=str(tmp_path / "paste.sqlite3"), spool_durability="normal",
        spool_max_size="1048576", sender_threads="3", retry_max_age="3600",
        rate_limit_share="0.5",
    )
    try:
        settings = middleware.settings
        assert settings.delivery == "spool"
        assert (settings.spool_durability, settings.spool_max_size) == ("normal", 1048576)
        assert (settings.sender.sender_threads, settings.sender.retry_max_age,
                settings.sender.rate_limit_share) == (3, 3600.0, 0.5)
    finally:
        middleware.close()
