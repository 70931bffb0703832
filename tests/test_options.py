"""Each option is declared once (klaviyo_middleware.settings.OPTIONS) and every
way of configuring the middleware — keywords, PasteDeploy, the environment,
Celery workers — follows that declaration."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from klaviyo_middleware import ConfigurationError, KlaviyoMiddleware
from klaviyo_middleware.delivery.celery.config import WORKER_OPTIONS, WorkerConfig, read_config
from klaviyo_middleware.klaviyo.account import API_KEY as API_KEY_OPTION
from klaviyo_middleware.klaviyo.account import RATE_LIMIT_SHARE, RETRY_MAX_AGE
from klaviyo_middleware.option import Option
from klaviyo_middleware.paste import filter_app_factory
from klaviyo_middleware.settings import OPTIONS, Settings, build_settings

from support.klaviyo_fake import API_KEY

CONFIGURATION = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
# Keywords that take Python objects: no ini file or environment can hold them.
OBJECT_KEYWORDS = {"user_loader", "mappings", "before_send", "on_delivered", "on_retry",
                   "on_dead", "csrf_session", "refuse_email", "celery_app", "messages",
                   "page_renderer", "language_loader"}


def keywords() -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(KlaviyoMiddleware.__init__).parameters
    return {name: p for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}


def type_hints() -> dict[str, Any]:
    # The WSGI types are imported only for type checkers; any stand-in will do.
    stand_ins = {"WSGIApplication": object, "WSGIEnvironment": dict, "StartResponse": object}
    return typing.get_type_hints(KlaviyoMiddleware.__init__, localns=stand_ins)


def accepts(hint: Any, value: object) -> bool:
    """Does a value of this shape fit the type hint? (Enough of typing for
    the option types: unions, tuples, iterables, path-likes.)"""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(accepts(arm, value) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        arms = typing.get_args(hint)
        return isinstance(value, tuple) and len(value) == len(arms) and all(
            accepts(arm, item) for arm, item in zip(arms, value, strict=True))
    if origin is collections.abc.Iterable:
        return isinstance(value, collections.abc.Iterable)
    if origin is os.PathLike:
        return isinstance(value, os.PathLike)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def test_every_declared_option_is_a_keyword_in_the_declared_order():
    declared = [option.name for option in OPTIONS]
    assert [name for name in keywords() if name not in OBJECT_KEYWORDS] == declared
    assert set(keywords()) == set(declared) | OBJECT_KEYWORDS


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_the_typed_keyword_follows_its_declaration(option: Option[Any]):
    parameter = keywords()[option.name]
    hint = type_hints()[option.name]
    assert parameter.default == option.keyword_default
    assert accepts(hint, option.keyword_default), (hint, option.keyword_default)
    # The declared default passes its own check (nothing needs the
    # environment except the key).
    if option is not API_KEY_OPTION:
        option.check(option.name, option.default)


def test_every_keyword_is_documented_once():
    doc = KlaviyoMiddleware.__doc__ or ""
    for name in keywords():
        assert len(re.findall(rf":param {name}:", doc)) == 1, name
    for option in OPTIONS:
        assert option.help, option.name
        if option.env:
            assert f"${option.env}" in doc


def test_settings_hold_one_field_per_option():
    assert [field.name for field in dataclasses.fields(Settings)] == [o.name for o in OPTIONS]


def test_the_docs_document_every_keyword():
    text = CONFIGURATION.read_text()
    table = text[:text.index("## PasteDeploy")]
    name = r"`([a-z0-9_]+)`"
    documented = set(re.findall(rf"^\| {name}(?:, {name})?(?:, {name})?", table, re.MULTILINE))
    names = {name for row in documented for name in row if name}
    assert set(keywords()) <= names, set(keywords()) - names


def ini_text(value: object) -> str:
    """How an ini file writes a declared default."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def test_paste_reads_every_option_from_text(tmp_path):
    local_conf = {option.name: ini_text(option.default) for option in OPTIONS
                  if option.default is not None}
    local_conf["api_key"] = API_KEY
    local_conf["spool_path"] = str(tmp_path / "spool.sqlite3")
    middleware = filter_app_factory(lambda e, s: [], {}, **local_conf)
    try:
        expected = build_settings({"api_key": API_KEY, "spool_path": local_conf["spool_path"]})
        assert middleware.settings == expected
    finally:
        middleware.close()


def test_an_unknown_key_suggests_the_declared_one():
    with pytest.raises(ConfigurationError, match="did you mean 'max_fields'"):
        filter_app_factory(lambda e, s: [], {}, api_key=API_KEY, max_feilds="3")
    with pytest.raises(ConfigurationError, match="did you mean 'allowed_hosts'"):
        build_settings({"api_key": API_KEY, "alowed_hosts": "a.example"})


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.env], ids=lambda o: o.name)
def test_options_with_an_environment_variable_read_it(option: Option[Any], tmp_path):
    samples: dict[str, Any] = {
        "api_key": API_KEY, "api_url": "http://127.0.0.1:9",
        "revision": "2026-10-15", "spool_path": str(tmp_path / "s.sqlite3"),
        "broker_url": "redis://127.0.0.1:6379/3", "craft_compat": True}
    environ = {API_KEY_OPTION.env or "": API_KEY,
               option.env or "": ini_text(samples[option.name])}
    settings = build_settings({}, environ)
    assert getattr(settings, option.name) == samples[option.name]
    # A keyword wins over the environment.
    given = build_settings({option.name: samples["api_key" if option is API_KEY_OPTION
                                                  else option.name]}, {**environ})
    assert getattr(given, option.name) == samples[option.name]


class TestCeleryWorkers:
    """Workers read the account's declarations: same checks, same defaults."""

    def test_defaults_are_the_middlewares(self):
        config = read_config({}, "redis://127.0.0.1:6379/0", {"KLAVIYO_PRIVATE_API_KEY": API_KEY})
        settings = build_settings({"api_key": API_KEY}, {})
        for option in WORKER_OPTIONS:
            if hasattr(settings, option.name):
                assert getattr(config, option.name) == getattr(settings, option.name)
        assert config.state_url == "redis://127.0.0.1:6379/0"

    def test_app_config_is_read_as_text_or_values(self):
        config = read_config({"klaviyo_rate_limit_share": "0.5", "klaviyo_retry_max_age": 60,
                              "klaviyo_bulk_size": "10"},
                             "amqp://localhost", {"KLAVIYO_PRIVATE_API_KEY": API_KEY,
                                                  "KLAVIYO_STATE_URL": "redis://x/1"})
        assert (config.rate_limit_share, config.retry_max_age, config.bulk_size) == (0.5, 60, 10)

    @pytest.mark.parametrize(("conf", "message"), [
        ({"klaviyo_rate_limit_share": "1.5"}, RATE_LIMIT_SHARE.name),
        ({"klaviyo_retry_max_age": "-1"}, RETRY_MAX_AGE.name),
        ({"klaviyo_api_key": "AbC123"}, "public key"),
        ({"klaviyo_bulk_size": "0"}, "bulk_size"),
    ])
    def test_bad_values_fail_as_they_do_in_the_middleware(self, conf, message):
        with pytest.raises(ConfigurationError, match=message):
            read_config(conf, "redis://127.0.0.1:6379/0", {"KLAVIYO_PRIVATE_API_KEY": API_KEY})

    def test_without_a_redis_broker_the_state_url_is_required(self):
        with pytest.raises(ConfigurationError, match="KLAVIYO_STATE_URL"):
            read_config({}, "amqp://localhost", {"KLAVIYO_PRIVATE_API_KEY": API_KEY})

    def test_the_key_never_shows(self):
        config = read_config({}, "redis://h/0", {"KLAVIYO_PRIVATE_API_KEY": API_KEY})
        assert API_KEY not in repr(config)
        assert [f.name for f in dataclasses.fields(WorkerConfig)] == [
            o.name for o in WORKER_OPTIONS]


class TestCraftCompat:
    """One switch sets the Craft plugin's behaviour; what a site sets itself wins."""

    def test_it_fills_what_was_not_set(self):
        settings = build_settings({"api_key": API_KEY, "craft_compat": True}, {})
        assert (settings.action_field, settings.sms_consent) == (True, "with_phone")
        plain = build_settings({"api_key": API_KEY}, {})
        assert (plain.craft_compat, plain.action_field, plain.sms_consent) == (
            False, False, "form")

    def test_explicit_settings_win(self):
        settings = build_settings({"api_key": API_KEY, "craft_compat": True,
                                   "action_field": False, "sms_consent": "form"}, {})
        assert (settings.action_field, settings.sms_consent) == (False, "form")

    def test_from_the_environment_and_an_ini_file(self, tmp_path):
        settings = build_settings({"api_key": API_KEY}, {"KLAVIYO_CRAFT_COMPAT": "true"})
        assert settings.craft_compat and settings.action_field
        middleware = filter_app_factory(lambda e, s: [], {}, api_key=API_KEY,
                                        craft_compat="true", sms_consent="form",
                                        spool_path=str(tmp_path / "s.sqlite3"))
        try:
            assert (middleware.settings.craft_compat, middleware.settings.sms_consent) == (
                True, "form")
        finally:
            middleware.close()


@pytest.mark.parametrize(("misspelt", "meant"), [
    ("alowed_hosts", "allowed_hosts"), ("befor_send", "before_send"),
    ("spool_max_szie", "spool_max_size"), ("KLAVIYO_SECRET", "secret")])
def test_a_misspelt_keyword_gets_a_did_you_mean(misspelt, meant):
    from klaviyo_middleware import KlaviyoMiddleware

    with pytest.raises(ConfigurationError, match=f"did you mean {meant!r}"):
        KlaviyoMiddleware(lambda e, s: [], api_key=API_KEY, delivery="sync",
                          **{misspelt: "x"})


# -- options under an old name -------------------------------------------------

def test_every_renamed_option_is_in_the_docs_table():
    from klaviyo_middleware.settings import BY_NAME, RENAMED

    text = CONFIGURATION.read_text()
    for old, (new, removal) in RENAMED.items():
        assert new in BY_NAME
        assert re.search(rf"^\| `{old}` \| `{new}`.*\| {re.escape(removal)} \|$", text,
                         re.MULTILINE), old


def test_an_old_keyword_still_works_and_says_its_new_name(tmp_path):
    with pytest.warns(FutureWarning, match="'worker_threads' is now 'sender_threads'.*0.3"):
        middleware = KlaviyoMiddleware(lambda e, s: [], api_key=API_KEY, worker_threads=5,
                                       spool_path=str(tmp_path / "spool.sqlite3"))
    try:
        assert middleware.settings.sender_threads == 5
        assert middleware.settings.sender.sender_threads == 5
    finally:
        middleware.close()


def test_an_old_ini_key_still_works(tmp_path):
    with pytest.warns(FutureWarning, match="'worker_threads' is now 'sender_threads'.*ini"):
        middleware = filter_app_factory(lambda e, s: [], {}, api_key=API_KEY,
                                        worker_threads="3",
                                        spool_path=str(tmp_path / "spool.sqlite3"))
    try:
        assert middleware.settings.sender_threads == 3
    finally:
        middleware.close()


def test_an_option_under_both_names_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="'sender_threads' alone"):
        KlaviyoMiddleware(lambda e, s: [], api_key=API_KEY, worker_threads=5,
                          sender_threads=3, spool_path=str(tmp_path / "spool.sqlite3"))
    with pytest.raises(ConfigurationError, match="'sender_threads' alone"):
        filter_app_factory(lambda e, s: [], {}, api_key=API_KEY, worker_threads="5",
                           sender_threads="3")


def test_an_old_name_in_the_settings_of_django_or_flask_warns():
    from klaviyo_middleware.contrib.flask import config_options
    from klaviyo_middleware.settings import current_names

    with pytest.warns(FutureWarning, match=r"settings.KLAVIYO_MIDDLEWARE"):
        assert current_names({"worker_threads": 4, "delivery": "spool"},
                             where="settings.KLAVIYO_MIDDLEWARE") == {
            "sender_threads": 4, "delivery": "spool"}
    with pytest.warns(FutureWarning, match="app.config"):
        assert config_options({"KLAVIYO_WORKER_THREADS": 4}) == {"sender_threads": 4}
