"""docs/flask.md: ``KlaviyoConnect`` with an app factory,
configuration from ``app.config``, Jinja globals, Flask-Login's user."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

flask = pytest.importorskip("flask")
flask_login = pytest.importorskip("flask_login")

from klaviyo_middleware import ConfigurationError, KlaviyoMiddleware  # noqa: E402
from klaviyo_middleware.contrib.flask import KlaviyoConnect  # noqa: E402
from klaviyo_middleware.testing import RunningFakeKlaviyo, serve_fake_klaviyo  # noqa: E402

UPDATE = "/klaviyoConnect/api/updateProfile"
LIST = "Y6nRLr"
TEMPLATES = {
    "layout.html": "<html lang='{{ page.language if page else 'en' }}'><body class=flask-site>"
                   "{% block body %}{% endblock %}</body></html>",
    "signup.html": "{% extends 'layout.html' %}{% block body %}<form method=post action=/join>"
                   "{{ klaviyo_inputs('track', redirect='/thanks', list='" + LIST + "') }}"
                   "<input name=email>{% for m in klaviyo_errors().get('email', []) %}"
                   "<p class=error>{{ m }}</p>{% endfor %}</form>{% endblock %}",
    "klaviyo_page.html": "{% extends 'layout.html' %}{% block body %}<h1>{{ page.title }}</h1>"
                         "{% for p in page.problems %}<p class=problem>{{ p.label }}: "
                         "{{ p.message }}</p>{% endfor %}<a href='{{ url_for('signup') }}'>"
                         "{{ page.back_text }}</a>{% endblock %}",
}


class Member(flask_login.UserMixin):
    def __init__(self, user_id: str, email: str, first_name: str) -> None:
        self.id, self.email, self.first_name = user_id, email, first_name


MEMBERS = {"7": Member("7", "grace@example.com", "Grace")}
klaviyo = KlaviyoConnect()


def create_app(**config: Any) -> Any:
    """The application factory pattern the README shows."""
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY="flask-test-secret", **config)
    app.jinja_loader = __import__("jinja2").DictLoader(TEMPLATES)
    login = flask_login.LoginManager(app)
    login.user_loader(MEMBERS.get)

    @app.route("/", methods=["GET", "POST"])
    def signup() -> str:
        return flask.render_template("signup.html", page=None)

    @app.route("/login/<user_id>")
    def log_in(user_id: str) -> str:
        flask_login.login_user(MEMBERS[user_id])
        return "ok"

    klaviyo.init_app(app)
    return app


@pytest.fixture
def fake() -> Iterator[RunningFakeKlaviyo]:
    with serve_fake_klaviyo(lists={LIST: "single_opt_in"}) as running:
        yield running


@pytest.fixture
def app(fake, tmp_path) -> Iterator[Any]:
    app = create_app(KLAVIYO_API_KEY="pk_flask_test_key_000000000000", KLAVIYO_API_URL=fake.url,
                     KLAVIYO_DELIVERY="sync", KLAVIYO_ACTION_FIELD=True,
                     KLAVIYO_PAGE_TEMPLATE="klaviyo_page.html")
    yield app
    app.extensions["klaviyo_middleware"].close()


def test_configured_from_app_config(app):
    middleware = app.extensions["klaviyo_middleware"]
    assert isinstance(middleware, KlaviyoMiddleware)
    assert app.wsgi_app is middleware
    assert middleware.settings.action_field is True
    assert middleware.settings.delivery == "sync"


def test_template_global_writes_the_form_and_it_reaches_klaviyo(app, fake):
    client = app.test_client()
    page = client.get("/").text
    assert 'name="action" value="klaviyoconnect/api/track"' in page
    assert f'name="list" value="{LIST}"' in page
    answer = client.post("/join", data={"action": "klaviyoconnect/api/track", "list": LIST,
                                        "redirect": "/thanks", "email": "ada@example.com"})
    assert answer.status_code == 303
    assert answer.headers["Location"] == "/thanks"
    assert [p["email"] for p in fake.snapshot()["profiles"]] == ["ada@example.com"]


def test_forwarded_errors_reach_the_template_global(app, fake):
    answer = app.test_client().post(UPDATE, data={"email": "nope", "forward": "/"},
                                    headers={"Accept-Language": "fr"})
    assert "<p class=error>Saisissez une adresse e-mail valide.</p>" in answer.text


def test_error_page_in_the_apps_template_and_the_visitors_language(app, fake):
    answer = app.test_client().post(UPDATE, data={"email": "nope"},
                                    headers={"Accept-Language": "de"})
    assert answer.status_code == 400
    assert answer.text == (
        "<html lang='de'><body class=flask-site><h1>Bitte prüfen Sie das Formular</h1>"
        "<p class=problem>E-Mail-Adresse: Geben Sie eine gültige E-Mail-Adresse ein.</p>"
        "<a href='/'>Zurück zum Formular</a></body></html>")


def test_the_user_mapping_is_flask_logins_current_user(app, fake):
    client = app.test_client()
    client.get("/login/7")
    answer = client.post(UPDATE, data={"klaviyoProfileMapping": "user", "list": LIST,
                                       "email": "someone-else@example.com"},
                         headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    [profile] = fake.snapshot()["profiles"]
    assert (profile["email"], profile["first_name"], profile["external_id"]) == (
        "grace@example.com", "Grace", "7")


def test_nobody_signed_in(app, fake):
    answer = app.test_client().post(UPDATE, data={"klaviyoProfileMapping": "user"},
                                    headers={"Accept": "application/json"})
    assert answer.status_code == 400
    assert answer.json["errors"] == {"email": ["Sign in to continue."]}


def test_keywords_win_over_config(fake):
    app = flask.Flask(__name__)
    app.config.update(KLAVIYO_API_KEY="pk_flask_test_key_000000000000", KLAVIYO_DELIVERY="spool")
    middleware = KlaviyoConnect().init_app(app, delivery="sync", api_url=fake.url)
    assert middleware.settings.delivery == "sync"


def test_a_bad_config_value_fails_at_start_up():
    app = flask.Flask(__name__)
    app.config.update(KLAVIYO_API_KEY="pk_flask_test_key_000000000000",
                      KLAVIYO_DELIVERY="carrier-pigeon")
    with pytest.raises(ConfigurationError, match="delivery"):
        KlaviyoConnect(app)


def test_a_near_miss_config_key_is_named(fake, caplog):
    app = flask.Flask(__name__)
    app.config.update(KLAVIYO_API_KEY="pk_flask_test_key_000000000000", KLAVIYO_API_URL=fake.url,
                      KLAVIYO_DELIVERY="sync", KLAVIYO_ALOWED_HOSTS="example.com",
                      KLAVIYO_PUBLIC_KEY="AbC123")
    with caplog.at_level(logging.WARNING):
        KlaviyoConnect(app)
    assert "did you mean 'KLAVIYO_ALLOWED_HOSTS'" in caplog.text
    assert "KLAVIYO_PUBLIC_KEY" not in caplog.text


def test_set_up_once_per_app(fake):
    app = flask.Flask(__name__)
    app.config.update(KLAVIYO_API_KEY="pk_flask_test_key_000000000000", KLAVIYO_DELIVERY="sync")
    extension = KlaviyoConnect(app)
    with pytest.raises(ConfigurationError, match="already"):
        extension.init_app(app)


def test_pages_follow_flask_babels_locale(fake):
    flask_babel = pytest.importorskip("flask_babel")
    app = flask.Flask(__name__)
    app.config.update(KLAVIYO_API_KEY="pk_flask_test_key_000000000000", KLAVIYO_API_URL=fake.url,
                      KLAVIYO_DELIVERY="sync")
    KlaviyoConnect(app)  # before Flask-Babel: the loader looks it up when asked
    # The site picks the language from its own ?lang=, not from the browser.
    flask_babel.Babel(app, locale_selector=lambda: flask.request.args.get("lang", "en"))
    answer = app.test_client().post(UPDATE + "?lang=nl", data={"email": "nope"},
                                    headers={"Accept-Language": "de"})
    assert answer.status_code == 400
    assert "Vul een geldig e-mailadres in." in answer.text
    plain = flask.Flask(__name__)
    plain.config.update(app.config)
    KlaviyoConnect(plain)
    answer = plain.test_client().post(UPDATE, data={"email": "nope"},
                                      headers={"Accept-Language": "de"})
    assert "Geben Sie eine gültige E-Mail-Adresse ein." in answer.text


def test_craft_compat_from_app_config(fake):
    app = create_app(KLAVIYO_API_KEY="pk_flask_test_key_000000000000", KLAVIYO_API_URL=fake.url,
                     KLAVIYO_DELIVERY="sync", KLAVIYO_CRAFT_COMPAT=True)
    try:
        middleware = app.extensions["klaviyo_middleware"]
        assert middleware.settings.action_field is True
        assert middleware.settings.sms_consent == "with_phone"
        answer = app.test_client().post(
            "/join", data={"action": "klaviyoconnect/api/track", "list": LIST,
                           "email": "ada@example.com"},
            headers={"X-Requested-With": "XMLHttpRequest"})
        assert answer.json == "success"
        assert [p["email"] for p in fake.snapshot()["profiles"]] == ["ada@example.com"]
    finally:
        app.extensions["klaviyo_middleware"].close()


def test_the_environment_variables_name_works_as_a_config_key(fake, monkeypatch):
    monkeypatch.delenv("KLAVIYO_PRIVATE_API_KEY", raising=False)
    app = flask.Flask(__name__)
    app.config.update(KLAVIYO_PRIVATE_API_KEY="pk_flask_test_key_000000000000",
                      KLAVIYO_API_URL=fake.url, KLAVIYO_DELIVERY="sync")
    middleware = KlaviyoConnect().init_app(app)
    try:
        assert middleware.settings.api_key == "pk_flask_test_key_000000000000"
    finally:
        middleware.close()


def test_a_page_template_that_is_not_there_is_said_at_start_up(fake, caplog):
    app = create_app(KLAVIYO_API_KEY="pk_flask_test_key_000000000000", KLAVIYO_API_URL=fake.url,
                     KLAVIYO_DELIVERY="sync", KLAVIYO_PAGE_TEMPLATE="klaviyo/missing.html")
    try:
        assert "KLAVIYO_PAGE_TEMPLATE='klaviyo/missing.html' is not found" in caplog.text
        assert "templates/klaviyo/missing.html" in caplog.text
    finally:
        app.extensions["klaviyo_middleware"].close()
