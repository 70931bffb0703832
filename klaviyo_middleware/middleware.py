"""The WSGI middleware: intercept Klaviyo Connect form posts, pass the rest through.

The request flow — screen, read, validate, hand over, answer — in one
place. Longer than the ~500 lines a module here keeps to because the
constructor declares every option, with its help, as keyword arguments (a
third of the file); how the visitor hears the outcome is web/answers.py's,
what each option means is settings.py's.
"""

from __future__ import annotations

import difflib
import inspect
import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from webob import Request, Response

from klaviyo_middleware import metrics
from klaviyo_middleware import settings as opts
from klaviyo_middleware.delivery.factory import build_delivery
from klaviyo_middleware.delivery.hooks import BeforeSend, Hooks, OnDead, OnDelivered, OnRetry
from klaviyo_middleware.delivery.protocol import CANCELLED, Delivery, Outcome
from klaviyo_middleware.delivery.retention import DEAD_LETTER_MAX_AGE
from klaviyo_middleware.errors import ConfigurationError, DeliveryError
from klaviyo_middleware.i18n.catalogs import Languages, Overrides
from klaviyo_middleware.i18n.message import msg
from klaviyo_middleware.klaviyo.account import (
    API_KEY,
    API_URL,
    RATE_LIMIT_SHARE,
    RETRY_MAX_AGE,
    REVISION,
)
from klaviyo_middleware.klaviyo.steps import plan
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.notices import warn_once
from klaviyo_middleware.redact import get_logger, set_personal_data_logging
from klaviyo_middleware.settings import BY_NAME, build_settings, options_doc, unknown_option_message
from klaviyo_middleware.web import action_trace, fields, redirects, responses
from klaviyo_middleware.web.answers import Answers, app_root
from klaviyo_middleware.web.body import (
    FORM_URLENCODED,
    JSON_TYPES,
    MULTIPART,
    BodyError,
    media_type,
    parse_body,
    read_body,
)
from klaviyo_middleware.web.fields import FieldError
from klaviyo_middleware.web.mappings import (
    DEFAULT_MAPPING,
    FORM_ENVIRON_KEY,
    MappingError,
    MappingRegistry,
    ProfileMapping,
    UserLoader,
)
from klaviyo_middleware.web.pages import PageRenderer
from klaviyo_middleware.web.routes import ACTION_PATHS, Route, route_for_field
from klaviyo_middleware.web.security import (
    ClientRateLimiter,
    check_csrf_token,
    client_address,
    client_key,
    cross_site_reason,
    is_public,
)
from klaviyo_middleware.web.validation import (
    EmailFilter,
    Errors,
    ValidationOptions,
    build_submission,
    misspelt_fields,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = get_logger(__name__)

RESULT_KEY = "klaviyo.result"
ERRORS_KEY = "klaviyo.errors"

# Bodies a hidden ``action`` field can arrive in (Craft reads it from all three).
_ACTION_FIELD_TYPES = (FORM_URLENCODED, MULTIPART, *JSON_TYPES)
# Klaviyo error pointers (/data/attributes/...) back to the form field names.
_POINTER_FIELDS = {
    "external_id": "id",
    "location": None,
    "properties": "extra",
}


# How a refused body is counted (docs/metrics.md).
_BODY_REASONS = {413: "too_large", 415: "unsupported_type"}

# What the visitor reads when a post could not be read for a reason we did
# not foresee; the details go to the log.
UNREADABLE = msg("The submission could not be read. Please check the form and try again.")


@dataclass(frozen=True)
class _ValidPost:
    """A post that passed every check, ready to hand to delivery."""

    body: bytes
    submission: Submission
    forward: tuple[str, str] | None
    redirect: str | None


class KlaviyoMiddleware:
    """Send Klaviyo Connect form posts to Klaviyo; pass every other request through.

    Wrap any WSGI application in one line::

        app.wsgi_app = KlaviyoMiddleware(app.wsgi_app, api_key="pk_...")

    Every option is keyword-only, and is checked here, at start-up. The
    options a configuration file can hold are declared once, in
    :data:`klaviyo_middleware.settings.OPTIONS` (default, environment
    variable, check); the keywords below them take Python callables.

    :param app: the WSGI application to wrap.
    {options}
    :param user_loader: ``user_loader(environ)`` returns the signed-in user
        for the ``user`` profile mapping.
    :param mappings: extra profile mappings, ``{{name: func(request)}}``.
    :param before_send: hook(s) ``f(submission, request)`` that may change a
        submission or cancel it by returning ``False``.
    :param on_delivered: observer(s) ``f(submission)``.
    :param on_retry: observer(s) ``f(submission, error, delay)``.
    :param on_dead: observer(s) ``f(submission, error)`` for submissions
        Klaviyo refused for good.
    :param csrf_session: ``f(environ)`` → the visitor's session id; when set,
        forms must carry a ``csrf_token`` made by
        :func:`klaviyo_middleware.csrf_token` (needs ``secret``).
    :param refuse_email: ``f(email)`` → true (or a message) to refuse an
        address, e.g. disposable-mail domains.
    :param celery_app: with ``delivery="celery"``, an existing Celery app to
        enqueue on instead.
    :param messages: ``{{language: {{English message: replacement}}}}``, to reword
        single messages without a catalog.
    :param page_renderer: ``f(page)`` → the HTML of a page the middleware
        answers itself (errors, thank-you) in the site's layout, or ``None``
        for the default page; see :class:`klaviyo_middleware.web.pages.Page`.
    :param language_loader: ``f(environ)`` → the language the site already
        chose for this visitor (a cookie, the URL), or ``None`` to follow
        ``Accept-Language``.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        # The declared options (klaviyo_middleware.settings.OPTIONS), in its
        # order; tests/test_options.py keeps names, types and defaults in step.
        api_key: str | None = API_KEY.keyword_default,
        api_url: str | None = API_URL.keyword_default,
        revision: str | None = REVISION.keyword_default,
        delivery: str = opts.DELIVERY.default,
        allowed_hosts: str | Iterable[str] = opts.ALLOWED_HOSTS.default,
        forward_prefixes: str | Iterable[str] = opts.FORWARD_PREFIXES.default,
        secret: str | None = opts.SECRET.default,
        action_field: bool | None = opts.ACTION_FIELD.keyword_default,
        phone_region: str | None = opts.PHONE_REGION.default,
        custom_source: str | None = opts.CUSTOM_SOURCE.default,
        event_prefix: str | None = opts.EVENT_PREFIX.default,
        sms_consent: str | None = opts.SMS_CONSENT.keyword_default,
        timeout: float | tuple[float, float] = opts.TIMEOUT.default,
        sync_retry_budget: float = opts.SYNC_RETRY_BUDGET.default,
        max_body_size: int = opts.MAX_BODY_SIZE.default,
        max_fields: int = opts.MAX_FIELDS.default,
        max_depth: int = opts.MAX_DEPTH.default,
        spool_path: str | os.PathLike[str] | None = opts.SPOOL_PATH.keyword_default,
        spool_durability: str = opts.SPOOL_DURABILITY.default,
        spool_max_size: int = opts.SPOOL_MAX_SIZE.default,
        dead_letter_max_size: int = opts.DEAD_LETTER_MAX_SIZE.default,
        sender_threads: int = opts.SENDER_THREADS.default,
        retry_max_age: float = RETRY_MAX_AGE.default,
        rate_limit_share: float = RATE_LIMIT_SHARE.default,
        allow_cross_site: bool = opts.ALLOW_CROSS_SITE.default,
        csrf_max_age: float = opts.CSRF_MAX_AGE.default,
        honeypot: str | None = opts.HONEYPOT.default,
        client_rate_limit: str | None = opts.CLIENT_RATE_LIMIT.default,
        client_ipv6_prefix: int = opts.CLIENT_IPV6_PREFIX.default,
        trusted_proxies: int = opts.TRUSTED_PROXIES.default,
        max_lists: int = opts.MAX_LISTS.default,
        max_properties: int = opts.MAX_PROPERTIES.default,
        max_string_length: int = opts.MAX_STRING_LENGTH.default,
        log_personal_data: bool = opts.LOG_PERSONAL_DATA.default,
        languages: str | Iterable[str] | None = opts.LANGUAGES.default,
        locale_dir: str | None = opts.LOCALE_DIR.default,
        broker_url: str | None = opts.BROKER_URL.keyword_default,
        dead_letter_max_age: float = DEAD_LETTER_MAX_AGE.default,
        craft_compat: bool | None = opts.CRAFT_COMPAT.keyword_default,
        # Keywords that take Python objects, which no ini file can hold.
        user_loader: UserLoader | None = None,
        mappings: Mapping[str, ProfileMapping] | None = None,
        before_send: BeforeSend | Iterable[BeforeSend] | None = None,
        on_delivered: OnDelivered | Iterable[OnDelivered] | None = None,
        on_retry: OnRetry | Iterable[OnRetry] | None = None,
        on_dead: OnDead | Iterable[OnDead] | None = None,
        csrf_session: Callable[[WSGIEnvironment], str | None] | None = None,
        refuse_email: EmailFilter | None = None,
        celery_app: Any = None,
        messages: Overrides | None = None,
        page_renderer: PageRenderer | None = None,
        language_loader: Callable[[WSGIEnvironment], str | None] | None = None,
        # A misspelt keyword gets the "did you mean" an ini key, a Flask or
        # Django setting gets, not Python's bare TypeError.
        **unknown: Any,
    ) -> None:
        # An option's old name (settings.RENAMED) still works, with a warning.
        old_names = {name: unknown.pop(name) for name in list(unknown) if name in opts.RENAMED}
        if unknown:
            raise ConfigurationError(_unknown_keyword(sorted(unknown)[0]))
        if not callable(app):
            raise TypeError("KlaviyoMiddleware wraps a WSGI application (a callable)")
        self.app = app
        # The keywords named after declared options, read by name so that
        # adding an option means one declaration and one keyword, not a third
        # list here.
        arguments = locals()
        self.settings = build_settings(_with_old_names(
            {name: arguments[name] for name in opts.BY_NAME}, old_names))
        if csrf_session is not None and self.settings.secret is None:
            raise ConfigurationError("csrf_session needs a secret to sign tokens with")
        self._csrf_session = csrf_session
        set_personal_data_logging(self.settings.log_personal_data)
        rate = self._client_rate = self.settings.client_rate_limit
        self._client_limiter = ClientRateLimiter(rate.limit, rate.period) if rate else None
        self.hooks = Hooks(before_send, on_delivered, on_retry, on_dead)
        if self.settings.delivery == "celery" and (
            self.hooks.delivered_hooks or self.hooks.retry_hooks or self.hooks.dead_hooks
        ):
            # They would silently never run: delivery happens on the workers.
            raise ConfigurationError(
                'with delivery="celery" the workers deliver: pass on_delivered, on_retry '
                "and on_dead to klaviyo_middleware.delivery.celery.tasks.register(celery_app, ...) "
                "in the module your workers load"
            )
        self.mappings = MappingRegistry(user_loader=user_loader, mappings=mappings)
        self._hosts = redirects.HostPolicy(self.settings.allowed_hosts)
        self._validation = ValidationOptions(
            phone_region=self.settings.phone_region,
            custom_source=self.settings.custom_source,
            event_prefix=self.settings.event_prefix,
            sms_consent=self.settings.sms_consent,
            max_lists=self.settings.max_lists,
            max_properties=self.settings.max_properties,
            refuse_email=refuse_email,
            drop_invalid_phone=self.settings.craft_compat,
        )
        self.languages = Languages(self.settings.languages, self.settings.locale_dir, messages)
        self.answers = Answers(self.languages, page_renderer, language_loader,
                               self.settings.craft_compat)
        self.delivery: Delivery = build_delivery(self.settings, self.hooks, celery_app)
        self._action_field = self.settings.action_field
        self._limits = self.settings.limits

    def __repr__(self) -> str:
        return f"<KlaviyoMiddleware {self.app!r} delivery={self.settings.delivery!r}>"

    # -- registration -----------------------------------------------------

    def mapping(self, name: str) -> Callable[[ProfileMapping], ProfileMapping]:
        """Decorator registering a profile mapping under ``name``."""
        return self.mappings.register(name)

    def before_send(self, hook: BeforeSend) -> BeforeSend:
        """Decorator adding a ``before_send`` hook."""
        self.hooks.before_send_hooks.append(hook)
        return hook

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted submission is delivered or dead-lettered."""
        return self.delivery.flush(timeout)

    def close(self) -> None:
        self.delivery.close()

    # -- WSGI ---------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # The hot path: one dict lookup, no Request object, for every request
        # that is not a Klaviyo action.
        route = ACTION_PATHS.get(environ.get("PATH_INFO", ""))
        if route is None:
            if environ.get("REQUEST_METHOD") == "POST":
                return self._other_post(environ, start_response)
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return responses.method_not_allowed()(environ, start_response)
        return self._handle(environ, start_response, route, None)

    def _other_post(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """A post to any other page: Craft-style, it may carry a hidden ``action``.

        With ``action_field`` the body is read and a Klaviyo Connect action
        is handled; otherwise (or when the body is not ours to read) the app
        gets the post as it came, and an action in it is reported as the app
        reads it, so that no such post is ever dropped without a trace.
        """
        kind = media_type(environ.get("CONTENT_TYPE"))
        if kind not in _ACTION_FIELD_TYPES:
            return self.app(environ, start_response)
        if not self._action_field:
            return self._watched(environ, start_response, kind, action_trace.OFF)
        limits = self._limits
        try:
            declared = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            declared = -1
        if not 0 < declared <= limits.max_body_size:
            # Not readable within our limits (no declared length, e.g. a
            # chunked upload, or too large), so not ours to judge: the app
            # gets the untouched stream.
            return self._watched(environ, start_response, kind, action_trace.UNREAD)
        body: bytes | None = None
        try:
            body = read_body(environ, limits)
            if not action_trace.may_name_an_action(body):
                # Most posts to a site's pages are its own forms: no need
                # to parse what cannot name a Klaviyo Connect action.
                return self.app(environ, start_response)
            form = parse_body(Request(environ), body, limits)
        except Exception as exc:
            # Not a form we can read, so not ours to judge: the app gets the
            # request as it came (read_body left a rewindable copy, if any).
            if not isinstance(exc, BodyError):
                log.warning("klaviyo_middleware: could not read a form post (%s); "
                            "passing it to the app", type(exc).__name__)
            if body is not None:
                environ["wsgi.input"] = io.BytesIO(body)
                self._trace(environ, action_trace.action_in(body, action_trace.body_kind(kind)),
                            action_trace.MALFORMED)
            return self.app(environ, start_response)
        raw_action = form.get("action")
        route = route_for_field(raw_action) if isinstance(raw_action, str) else None
        if route is None:
            if isinstance(raw_action, str) and action_trace.names_klaviyo_connect(raw_action):
                self._trace(environ, raw_action.strip(), action_trace.UNKNOWN)
            environ["wsgi.input"] = io.BytesIO(body)
            return self.app(environ, start_response)
        return self._handle(environ, start_response, route, (body, form))

    def _watched(self, environ: WSGIEnvironment, start_response: StartResponse,
                 kind: str, reason: str) -> Iterable[bytes]:
        """The app, reading a body in which a Klaviyo Connect action is reported."""
        try:
            length: int | None = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            length = None
        environ["wsgi.input"] = action_trace.ActionWatch(
            environ["wsgi.input"], log, environ.get("PATH_INFO", ""), reason,
            action_trace.body_kind(kind), length)
        return self.app(environ, start_response)

    @staticmethod
    def _trace(environ: WSGIEnvironment, action: str | None, reason: str) -> None:
        if action is not None:
            action_trace.report(log, environ.get("PATH_INFO", ""), action, reason)

    def _handle(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        route: Route,
        parsed: tuple[bytes, dict[str, Any]] | None,
    ) -> Iterable[bytes]:
        request = Request(environ)
        action = route.action
        try:
            post = self._read_post(request, route, parsed)
        except Exception:
            # The one place where anything unexpected while reading a post
            # (a parser's corner case, a site's mapping with a bug) becomes a
            # clear 400 instead of a 500. The traceback is logged redacted.
            log.exception("klaviyo_middleware: could not read a post to %s", action)
            post = self._refuse(request, 400, {"form": [UNREADABLE]}, reason="unreadable")
        if not isinstance(post, _ValidPost):
            return post(environ, start_response)
        body, submission, forward, redirect = (
            post.body, post.submission, post.forward, post.redirect)
        outcome = self._send(request, submission)
        if not outcome.accepted:
            status, failure = self._failure(outcome.error)
            answer = self._invalid_response(request, body, forward, failure, status,
                                             "unavailable" if status == 503 else "rejected")
            return answer(environ, start_response)
        if outcome.cancelled:
            metrics.refused("cancelled")
        else:
            metrics.accepted(action)
            _log_accepted(submission, outcome, route.name)
        result = {
            "success": True,
            # As posted (track, updateProfile …), not our internal name.
            "action": route.name,
            "submission_id": submission.id,
            "cancelled": outcome.cancelled,
            "delivered": outcome.delivered,
            "queued": outcome.queued,
            "profile_id": outcome.profile_id,
        }
        environ[RESULT_KEY] = result
        if forward is not None:
            return self._forward(environ, body, forward, start_response)
        response = self.answers.success(request, redirect, result)
        return response(environ, start_response)

    def _read_post(
        self,
        request: Request,
        route: Route,
        parsed: tuple[bytes, dict[str, Any]] | None,
    ) -> _ValidPost | WSGIApplication:
        """Screen, read and validate a post: a valid submission, or the answer to give."""
        environ = request.environ
        refusal = self._screen(request)
        if refusal is not None:
            return refusal
        try:
            body, form = parsed or self._read(request)
        except BodyError as exc:
            if exc.status == 415:
                kind = media_type(request.content_type)[:100]
                warn_once(log, ("content type", request.path_info, kind),
                          "klaviyo_middleware: a post to %s came as %r and was refused (415), "
                          "nothing sent: the form must be posted as "
                          "application/x-www-form-urlencoded (a plain <form method=\"post\">, "
                          "no enctype=\"text/plain\"), multipart/form-data or "
                          "application/json", request.path_info, kind)
            return self._refuse(request, exc.status, {"form": [exc.message]},
                                reason=_BODY_REASONS.get(exc.status, "unreadable"))
        environ[FORM_ENVIRON_KEY] = form
        refusal = self._check_form(request, form)
        if refusal is not None:
            return refusal
        for field, meant in misspelt_fields(form):
            warn_once(log, ("misspelt", request.path_info, field),
                      "klaviyo_middleware: a form posted to %s has a field %r, which is not "
                      "read; did you mean %r?", request.path_info, field, meant)
        submission, errors = self._validate(request, route, form)
        forward, redirect = self._targets(request, form, errors)
        if submission is None or errors:
            return self._invalid_response(request, body, forward, errors or {}, 400, "invalid")
        return _ValidPost(body, submission, forward, redirect)

    def _screen(self, request: Request) -> Response | None:
        """Refuse cross-site posts and clients over their rate, before reading the body."""
        if not self.settings.allow_cross_site:
            reason = cross_site_reason(request.headers, request.host, self._hosts)
            if reason is not None:
                log.warning("klaviyo_middleware: refused a post to %s: %s",
                            request.path_info, reason)
                return self._refuse(request, 403, {"form": [msg(
                    "This form must be sent from this site. Reload the page and try again.")]},
                    reason="cross_site")
        if self._client_limiter is not None and self._client_rate is not None:
            address = client_address(request.environ, self.settings.trusted_proxies)
            if self._client_rate.public_only and not is_public(address):
                return None
            wait = self._client_limiter.retry_after(
                client_key(address, self.settings.client_ipv6_prefix))
            if wait:
                if self._client_rate.public_only:
                    warn_once(log, ("default client_rate_limit",),
                              "klaviyo_middleware: the default client_rate_limit (120 a minute "
                              "per client and process) refused a post; if visitors reach the "
                              "site through a proxy or CDN, set trusted_proxies, or set "
                              "client_rate_limit yourself ('off' to turn it off)")
                return self._refuse(request, 429, {"form": [msg(
                    "Too many submissions. Please wait a moment and try again.")]},
                    retry_after=wait, reason="rate_limited")
        return None

    def _check_form(self, request: Request, form: dict[str, Any]) -> Response | None:
        """The honeypot and the CSRF token, once the form is read."""
        honeypot = self.settings.honeypot
        if honeypot and form.get(honeypot) not in (None, ""):
            # Answer as if it worked: a bot told it failed just adapts.
            log.info("klaviyo_middleware: honeypot field filled; submission dropped")
            metrics.refused("honeypot")
            request.environ[RESULT_KEY] = {"success": True, "cancelled": True}
            return self.answers.success(request, None, {"success": True})
        if self._csrf_session is not None:
            try:
                session = self._csrf_session(request.environ)
            except Exception:
                log.exception("klaviyo_middleware: csrf_session failed")
                session = None
            token = form.get("csrf_token")
            if not (session and isinstance(token, str) and self.settings.secret and
                    check_csrf_token(token, self.settings.secret, session,
                                     self.settings.csrf_max_age)):
                return self._refuse(request, 403, {"csrf_token": [msg(
                    "This form has expired. Reload the page and try again.")]}, reason="csrf")
        return None

    def _read(self, request: Request) -> tuple[bytes, dict[str, Any]]:
        limits = self._limits
        body = read_body(request.environ, limits)
        return body, parse_body(request, body, limits)

    # -- validation -------------------------------------------------------

    def _validate(
        self, request: Request, route: Route, form: dict[str, Any]
    ) -> tuple[Submission | None, Errors]:
        name = form.get("klaviyoProfileMapping") or DEFAULT_MAPPING
        mapping = self.mappings.get(name) if isinstance(name, str) else None
        if mapping is None:
            return None, {"klaviyoProfileMapping": [msg("Unknown profile mapping.")]}
        try:
            profile_fields = mapping(request)
        except MappingError as exc:
            return None, {exc.field: [exc.message]}
        return build_submission(route, profile_fields, form, self._validation)

    def _targets(
        self, request: Request, form: dict[str, Any], errors: Errors
    ) -> tuple[tuple[str, str] | None, str | None]:
        """Check ``forward`` and ``redirect``, adding any problem to ``errors``."""
        forward = redirect = None
        raw_forward = form.get("forward")
        if raw_forward not in (None, ""):
            try:
                forward = redirects.forward_target(fields.text(raw_forward),
                                                   self.settings.forward_prefixes)
            except FieldError as exc:
                errors.setdefault("forward", []).append(str(exc))
        raw_redirect = form.get("redirect")
        # With forward, redirect belongs to the forwarded action (Commerce's
        # checkout posts its own, often an absolute siteUrl()): passed on in
        # the body untouched, never judged here.
        if raw_redirect not in (None, "") and raw_forward in (None, ""):
            try:
                target = fields.text(raw_redirect)
                if self.settings.secret is not None:
                    target = redirects.unsign_redirect(target, self.settings.secret)
                elif redirects.looks_signed(target):
                    # A Craft page (perhaps cached) hashed it with
                    # redirectInput(): the URL is what the site meant.
                    target = target[redirects.DIGEST_LENGTH:]
                    warn_once(log, ("hashed redirect",),
                              "klaviyo_middleware: a form's redirect is hashed by Craft's "
                              "redirectInput(), but no secret is set, so it was not "
                              "verified: set secret to the Craft site's security key "
                              "(CRAFT_SECURITY_KEY)")
                redirect = redirects.safe_redirect(target, self._hosts, app_root(request.environ))
            except FieldError as exc:
                if isinstance(exc, redirects.HostNotAllowed):
                    # A trick, or the site's own host missing from the setting:
                    # the visitor's refusal alone would leave the owner unaware.
                    warn_once(log, ("redirect host", request.path_info, exc.host[:253]),
                              "klaviyo_middleware: a form posted to %s asked to redirect to "
                              "host %r, which allowed_hosts does not list, so the post was "
                              "refused (400) and not sent: if that host is the site's own, "
                              "add it to allowed_hosts", request.path_info, exc.host[:253])
                errors.setdefault("redirect", []).append(str(exc))
        return forward, redirect

    # -- delivery -----------------------------------------------------------

    def _send(self, request: Request, submission: Submission) -> Outcome:
        """Hand the submission to delivery, unless a hook cancels it."""
        if not self.hooks.run_before_send(submission, request):
            log.info("klaviyo_middleware: submission %s cancelled by a hook", submission.id)
            return CANCELLED
        try:
            return self.delivery.submit(submission)
        except Exception as exc:
            # Whatever went wrong, the visitor gets a clear "try again", and
            # the log gets the traceback (submissions' reprs hold no personal data).
            log.exception("klaviyo_middleware: delivery of %s failed", submission.id)
            return Outcome(accepted=False, error=DeliveryError(f"delivery failed: {exc!r}"))

    @staticmethod
    def _failure(error: DeliveryError | None) -> tuple[int, Errors]:
        """What the visitor sees when a submission could not be accepted."""
        if error is not None and error.status in (400, 409, 422) and not error.transient:
            field = _field_for_pointer(error.pointer)
            return 400, {field: [msg("This value was not accepted. Please check it.")]}
        if error is not None and error.code == "unserialisable":
            # Asking the visitor to try again would give the same result.
            return 400, {"form": [UNREADABLE]}
        return 503, {
            "form": [msg("We could not save your details just now. Please try again in a minute.")]
        }

    # -- answers ------------------------------------------------------------

    def _invalid_response(
        self,
        request: Request,
        body: bytes,
        forward: tuple[str, str] | None,
        errors: Errors,
        status: int,
        reason: str,
    ) -> WSGIApplication:
        metrics.refused(reason)
        environ = request.environ
        language = self.answers.language(request)
        # The site's own page shows these beside its fields: in the visitor's language.
        translated = self.answers.translated(errors, language)
        environ[ERRORS_KEY] = translated
        environ[RESULT_KEY] = {"success": False, "errors": translated}
        if forward is not None:
            def forwarding(environ: WSGIEnvironment, start_response: StartResponse
                           ) -> Iterable[bytes]:
                return self._forward(environ, body, forward, start_response)

            return forwarding
        return self.answers.refusal(request, status, errors, language)

    def _refuse(self, request: Request, status: int, errors: Errors, *,
                reason: str, retry_after: int | None = None) -> Response:
        """Refuse a post before it could be validated (counted by ``reason``)."""
        metrics.refused(reason)
        return self.answers.refusal(request, status, errors, self.answers.language(request),
                                    retry_after)

    def page(self, environ: WSGIEnvironment, status: int = 200,
             errors: Errors | None = None) -> Response:
        """The page the middleware would answer with itself (the thank-you
        page for 200), in the visitor's language and the site's layout: for
        an integration that must answer for it (docs/django.md, ``forward``)."""
        return self.answers.page(Request(environ), status, errors)

    def _forward(
        self,
        environ: WSGIEnvironment,
        body: bytes,
        target: tuple[str, str],
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Run the inner app on ``target`` with the same method and a fresh body."""
        forwarded = dict(environ)
        forwarded["PATH_INFO"], forwarded["QUERY_STRING"] = target
        forwarded["wsgi.input"] = io.BytesIO(body)
        forwarded["CONTENT_LENGTH"] = str(len(body))
        # WebOb caches parsed bodies and query strings in the environ; the
        # inner app must parse its own request, not ours.
        for key in [key for key in forwarded if key.startswith("webob.")]:
            del forwarded[key]
        return self.app(forwarded, start_response)


# The declared options' lines take the place of {options}: documented once,
# in settings.OPTIONS, and shown by help(KlaviyoMiddleware) all the same.
KlaviyoMiddleware.__doc__ = (KlaviyoMiddleware.__doc__ or "").format(options=options_doc("    "))


def _log_accepted(submission: Submission, outcome: Outcome, posted_as: str) -> None:
    """One INFO line per accepted submission, naming the action as the form
    posted it (``track``, ``updateProfile``); the log filter masks the person."""
    if not log.isEnabledFor(logging.INFO):
        return
    person = submission.profile.get("email") or submission.profile.get("phone_number") or "-"
    log.info("klaviyo_middleware: accepted %s: %s for %s, lists [%s], steps [%s]%s",
             submission.id, posted_as, person, ", ".join(submission.lists),
             ", ".join(plan(submission)),
             " (delivered)" if outcome.delivered else " (queued)" if outcome.queued else "")


def _with_old_names(given: dict[str, Any], old_names: dict[str, Any]) -> dict[str, Any]:
    """The keywords with the options given under their old names put in;
    the new keyword must then be left at its default (one value, not two)."""
    if not old_names:
        return given  # the usual case: no signature to inspect at start-up
    defaults = inspect.signature(KlaviyoMiddleware.__init__).parameters
    for old in old_names:
        new = opts.RENAMED[old][0]
        if given[new] != defaults[new].default:
            raise ConfigurationError(
                f"KlaviyoMiddleware() got {old!r}, the old name of {new!r}, and {new!r}; "
                f"give {new!r} alone")
    # stacklevel: the warning points at the line that made the middleware.
    given.update(opts.current_names(old_names, stacklevel=4))
    return given


def _unknown_keyword(name: str) -> str:
    known = [parameter.name for parameter
             in inspect.signature(KlaviyoMiddleware.__init__).parameters.values()
             if parameter.kind is parameter.KEYWORD_ONLY]
    if name.lower().removeprefix("klaviyo_") in BY_NAME:
        return unknown_option_message(name)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; see help(KlaviyoMiddleware)"
    return f"KlaviyoMiddleware() got an unknown keyword {name!r}{hint}"


def _field_for_pointer(pointer: str | None) -> str:
    """``/data/attributes/location/city`` → ``city``; unknown → ``form``."""
    if not pointer:
        return "form"
    parts = [part for part in pointer.split("/") if part]
    if len(parts) < 3 or parts[:2] != ["data", "attributes"]:
        return "form"
    name = parts[2]
    if name in _POINTER_FIELDS:
        mapped = _POINTER_FIELDS[name]
        if mapped is None:
            return parts[3] if len(parts) > 3 else "form"
        return mapped
    return name
