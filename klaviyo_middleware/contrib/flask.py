"""Flask integration (docs/flask.md): an extension in Flask's own shape.

    from klaviyo_middleware.contrib.flask import KlaviyoConnect

    klaviyo = KlaviyoConnect()

    def create_app():
        app = Flask(__name__)
        app.config["KLAVIYO_API_KEY"] = "pk_..."
        klaviyo.init_app(app)
        return app

Every option of :class:`~klaviyo_middleware.KlaviyoMiddleware` is read from
``app.config["KLAVIYO_<NAME>"]`` (``KLAVIYO_ALLOWED_HOSTS``,
``KLAVIYO_SPOOL_PATH`` …), with keywords to the constructor or ``init_app``
taking precedence; ``KLAVIYO_PAGE_TEMPLATE`` names a Jinja template for the
middleware's own pages. Templates get ``klaviyo_inputs(...)``,
``klaviyo_errors()`` and ``klaviyo_result()`` as globals. With Flask-Login
set up on the app, the ``user`` mapping is its ``current_user``; with
Flask-Babel, the middleware's pages follow the locale it selects.
"""

from __future__ import annotations

import difflib
from functools import partial
from typing import TYPE_CHECKING, Any

from klaviyo_middleware.contrib import missing_extra

try:
    from flask import Flask, render_template, request
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "flask") from None

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.redact import get_logger
from klaviyo_middleware.settings import BY_NAME, OPTIONS, RENAMED, current_names
from klaviyo_middleware.web.form_inputs import hidden_inputs
from klaviyo_middleware.web.pages import Page, PageRenderer

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

log = get_logger(__name__)

PREFIX = "KLAVIYO_"
PAGE_TEMPLATE = "KLAVIYO_PAGE_TEMPLATE"
EXTENSION = "klaviyo_middleware"
_USER_FIELDS = ("email", "first_name", "last_name")


class KlaviyoConnect:
    """Wrap a Flask app's ``wsgi_app`` in the middleware configured from ``app.config``."""

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, **options: Any) -> KlaviyoMiddleware:
        """Configure ``app``; returns the middleware, also kept in
        ``app.extensions["klaviyo_middleware"]``."""
        if EXTENSION in app.extensions:
            raise ConfigurationError("KlaviyoConnect is already set up on this app")
        given = {**config_options(app.config), **self.options, **options}
        given.setdefault("user_loader", flask_login_user_loader(app))
        given.setdefault("language_loader", flask_babel_language_loader(app))
        template = app.config.get(PAGE_TEMPLATE)
        if template and "page_renderer" not in given:
            _look_for(app, template)
            given["page_renderer"] = flask_renderer(app, template)
        middleware = KlaviyoMiddleware(app.wsgi_app, **given)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION] = middleware
        app.jinja_env.globals.update(
            klaviyo_inputs=partial(hidden_inputs, secret=middleware.settings.secret),
            klaviyo_errors=_environ_value("klaviyo.errors", {}),
            klaviyo_result=_environ_value("klaviyo.result", None),
        )
        return middleware


def _look_for(app: Flask, template: str) -> None:
    """Say at start-up, once, when the page template is not there (every
    error page would otherwise log a traceback). A warning, not an error: a
    blueprint registered later may still bring it."""
    from jinja2 import TemplateNotFound

    try:
        app.jinja_env.get_template(template)
    except TemplateNotFound:
        log.warning("klaviyo_middleware: %s=%r is not found by the app's template loader: put "
                    "it at %s/%s (the middleware shows its default page until then)",
                    PAGE_TEMPLATE, template, app.template_folder or "templates", template)


# An option's environment variable, also accepted as a config key.
_ENV_NAMES = {option.env: option.name for option in OPTIONS if option.env}


def config_options(config: Any) -> dict[str, Any]:
    """``{option: value}`` for every ``KLAVIYO_<OPTION>`` in a Flask config.

    Other ``KLAVIYO_`` keys are the site's own business, but one that is
    one typo away from an option is named in a warning."""
    options: dict[str, Any] = {}
    for key, value in config.items():
        if not key.startswith(PREFIX) or key == PAGE_TEMPLATE:
            continue
        name = key[len(PREFIX):].lower()
        if name in BY_NAME or name in RENAMED:
            options[name] = value
            continue
        if key in _ENV_NAMES:
            # KLAVIYO_PRIVATE_API_KEY: the environment variable's name,
            # which the docs (and our own errors) print.
            options.setdefault(_ENV_NAMES[key], value)
            continue
        close = difflib.get_close_matches(name, BY_NAME, n=1, cutoff=0.85)
        if close:
            log.warning("klaviyo_middleware: app.config[%r] is not an option; did you mean "
                        "%r?", key, PREFIX + close[0].upper())
    return current_names(options, where="app.config")


def flask_login_user_loader(app: Flask) -> Any:
    """A ``user_loader`` returning Flask-Login's ``current_user`` as a
    mapping, or ``None`` when the app does not use Flask-Login."""
    if getattr(app, "login_manager", None) is None:
        return None
    from flask_login import current_user

    def load_flask_login_user(environ: WSGIEnvironment) -> dict[str, Any] | None:
        # The middleware runs outside Flask's request handling: a request
        # context gives Flask-Login the session cookie, as a view would have.
        with app.request_context(dict(environ)):
            user = current_user._get_current_object()
            if not getattr(user, "is_authenticated", False):
                return None
            # Read now: after the context, a database session may be gone.
            fields = {name: getattr(user, name, None) for name in _USER_FIELDS}
            fields["id"] = user.get_id()
            return fields

    return load_flask_login_user


def flask_babel_language_loader(app: Flask) -> Any:
    """A ``language_loader`` asking Flask-Babel which locale the app chose
    for the request (its locale selector); ``None`` (so ``Accept-Language``)
    while the app has no Flask-Babel, which may be set up after this."""

    def load_flask_babel_language(environ: WSGIEnvironment) -> str | None:
        if "babel" not in app.extensions:
            return None
        from flask_babel import get_locale

        with app.request_context(dict(environ)):
            locale = get_locale()
            return str(locale) if locale is not None else None

    return load_flask_babel_language


def flask_renderer(app: Flask, template: str) -> PageRenderer:
    """A ``page_renderer`` rendering a template of the app with ``page``, in
    a request context (``url_for``, ``request`` and ``current_user`` work)."""

    def render_with_flask(page: Page) -> str:
        environ = dict(page.request.environ) if page.request is not None else {}
        with app.request_context(environ):
            return render_template(template, page=page)

    return render_with_flask


def _environ_value(key: str, default: Any) -> Any:
    """A template global reading what the middleware left in the WSGI environ
    of a ``forward``\\ed request (docs/forms.md, "Answers")."""

    def read() -> Any:
        return request.environ.get(key, default)

    read.__name__ = key.replace(".", "_")
    return read
