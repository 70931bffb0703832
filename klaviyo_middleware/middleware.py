"""The WSGI middleware: intercept Klaviyo Connect form posts, pass the rest through."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from webob import Request, Response

from klaviyo_middleware.delivery.factory import build_delivery
from klaviyo_middleware.delivery.hooks import BeforeSend, Hooks, OnDead, OnDelivered, OnRetry
from klaviyo_middleware.delivery.protocol import Delivery, Outcome
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.account import DEFAULT_RATE_LIMIT_SHARE, DEFAULT_RETRY_MAX_AGE
from klaviyo_middleware.klaviyo.client import KlaviyoError
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import get_logger, set_personal_data_logging
from klaviyo_middleware.settings import build_settings
from klaviyo_middleware.web import fields, redirects, responses
from klaviyo_middleware.web.body import (
    FORM_URLENCODED,
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
from klaviyo_middleware.web.routes import ACTION_PATHS, Route, route_for_field
from klaviyo_middleware.web.security import (
    ClientRateLimiter,
    check_csrf_token,
    client_address,
    cross_site_reason,
)
from klaviyo_middleware.web.validation import (
    EmailFilter,
    Errors,
    ValidationOptions,
    build_submission,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = get_logger(__name__)

RESULT_KEY = "klaviyo.result"
ERRORS_KEY = "klaviyo.errors"

_FORM_TYPES = (FORM_URLENCODED, MULTIPART)
# How long a visitor is told to wait when Klaviyo cannot take a submission.
_RETRY_AFTER_SECONDS = "60"
# Klaviyo error pointers (/data/attributes/...) back to the form field names.
_POINTER_FIELDS = {
    "external_id": "id",
    "location": None,
    "properties": "extra",
}


# What the visitor reads when a post could not be read for a reason we did
# not foresee; the details go to the log.
UNREADABLE = "The submission could not be read. Please check the form and try again."


@dataclass(frozen=True)
class _Accepted:
    """A post that passed every check, ready to hand to delivery."""

    body: bytes
    submission: Submission
    forward: tuple[str, str] | None
    redirect: str | None


class KlaviyoMiddleware:
    """Send Klaviyo Connect form posts to Klaviyo; pass every other request through.

    Wrap any WSGI application in one line::

        app.wsgi_app = KlaviyoMiddleware(app.wsgi_app, api_key="pk_...")

    Every option is keyword-only, and is checked here, at start-up.

    :param app: the WSGI application to wrap.
    :param api_key: Klaviyo private API key; default ``$KLAVIYO_PRIVATE_API_KEY``.
    :param api_url: Klaviyo's base URL; default ``$KLAVIYO_API_URL`` or
        ``https://a.klaviyo.com`` (point it at a fake Klaviyo in tests).
    :param revision: the Klaviyo API revision sent with every call.
    :param delivery: ``"spool"`` commits each submission to a local SQLite
        spool and delivers in the background; ``"sync"`` sends before
        answering the visitor (tests, tiny sites).
    :param allowed_hosts: hosts that absolute ``redirect`` targets may use
        (``"shop.example.com"``, ``".example.com"`` for subdomains too).
    :param secret: when set, ``redirect`` values must be signed with
        :func:`klaviyo_middleware.sign_redirect`.
    :param action_field: also honour a hidden ``action`` field posted to any
        path (Craft's way of posting forms to the current page).
    :param phone_region: region for phone numbers written without ``+``
        (e.g. ``"US"``); without it they must be international.
    :param custom_source: stored on Klaviyo's consent record of subscriptions.
    :param event_prefix: put in front of every metric name (``"Website: "``).
    :param sms_consent: ``"form"`` (default) subscribes a phone number to SMS
        when it subscribes alone or the form posts a true ``sms_consent``;
        ``"with_phone"`` whenever a subscribing form carries a phone number,
        as today's Craft plugin does. SMS consent carries legal duties:
        choose it knowingly.
    :param user_loader: ``user_loader(environ)`` returns the signed-in user
        for the ``user`` profile mapping.
    :param mappings: extra profile mappings, ``{name: func(request)}``.
    :param before_send: hook(s) ``f(submission, request)`` that may change a
        submission or cancel it by returning ``False``.
    :param on_delivered: observer(s) ``f(submission)``.
    :param on_retry: observer(s) ``f(submission, error, delay)``.
    :param on_dead: observer(s) ``f(submission, error)`` for submissions
        Klaviyo refused for good.
    :param timeout: seconds for Klaviyo calls, or a ``(connect, read)`` pair.
    :param sync_retry_budget: seconds a synchronous delivery may spend on
        calls and retries before the visitor is asked to try again; the
        visitor waits at most this plus one read timeout.
    :param max_body_size: bytes; larger submissions are answered with 413.
    :param max_fields: form fields (or JSON values) in one submission.
    :param max_depth: nesting depth of bracketed names or JSON.
    :param spool_path: the spool file; default ``$KLAVIYO_SPOOL_PATH`` or
        ``~/.cache/klaviyo_middleware/spool.sqlite3``. Processes of one site
        share it.
    :param spool_durability: ``"full"`` or ``"normal"`` (SQLite synchronous).
    :param spool_max_size: bytes; when full, visitors get 503 + Retry-After.
    :param worker_threads: delivery threads per process.
    :param retry_max_age: seconds a failing submission is retried before it
        goes to the dead letters.
    :param rate_limit_share: share of Klaviyo's per-account rate limits used.
    :param allow_cross_site: accept posts whose ``Origin``, ``Sec-Fetch-Site``
        or ``Referer`` shows another site (refused with 403 by default;
        ``allowed_hosts`` count as this site).
    :param csrf_session: ``f(environ)`` → the visitor's session id; when set,
        forms must carry a ``csrf_token`` made by
        :func:`klaviyo_middleware.csrf_token` (needs ``secret``).
    :param csrf_max_age: seconds a CSRF token stays valid.
    :param honeypot: name of a hidden field humans leave empty; a submission
        that fills it gets the usual success answer and is not sent.
    :param client_rate_limit: e.g. ``"10/minute"``: submissions per client
        IP and process; more get 429 with ``Retry-After``. Off by default.
    :param trusted_proxies: how many proxies in front of the site append to
        ``X-Forwarded-For`` (0: use ``REMOTE_ADDR``).
    :param max_lists: lists one submission may name.
    :param max_properties: custom profile or event properties per submission.
    :param max_string_length: characters in any one field (Klaviyo: 100 KB).
    :param refuse_email: ``f(email)`` → true (or a message) to refuse an
        address, e.g. disposable-mail domains.
    :param log_personal_data: show email addresses and phone numbers in log
        messages (masked by default).
    :param broker_url: with ``delivery="celery"``, the Redis or RabbitMQ
        broker (default ``$KLAVIYO_BROKER_URL``).
    :param celery_app: with ``delivery="celery"``, an existing Celery app to
        enqueue on instead.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        revision: str | None = None,
        # Commit to a local spool and deliver in the background: the visitor
        # never waits on Klaviyo, and nothing accepted is lost.
        delivery: str = "spool",
        allowed_hosts: str | Iterable[str] = (),
        secret: str | None = None,
        action_field: bool = False,
        phone_region: str | None = None,
        custom_source: str | None = None,
        event_prefix: str | None = None,
        sms_consent: str = "form",
        user_loader: UserLoader | None = None,
        mappings: Mapping[str, ProfileMapping] | None = None,
        before_send: BeforeSend | Iterable[BeforeSend] | None = None,
        on_delivered: OnDelivered | Iterable[OnDelivered] | None = None,
        on_retry: OnRetry | Iterable[OnRetry] | None = None,
        on_dead: OnDead | Iterable[OnDead] | None = None,
        timeout: float | tuple[float, float] | None = None,
        # Long enough to ride out a brief Klaviyo hiccup, short enough that a
        # visitor is not left staring at a spinner.
        sync_retry_budget: float = 5.0,
        # Bigger than any real form (Klaviyo's own profile limit is 100 KB).
        max_body_size: int = 256 * 1024,
        max_fields: int = 1000,
        # Klaviyo documents 10 levels of nesting for properties.
        max_depth: int = 10,
        spool_path: str | os.PathLike[str] | None = None,
        # "full" survives power loss; "normal" only process crashes, but is faster.
        spool_durability: str = "full",
        spool_max_size: int = 256 * 1024 * 1024,
        worker_threads: int = 2,
        retry_max_age: float = DEFAULT_RETRY_MAX_AGE,
        rate_limit_share: float = DEFAULT_RATE_LIMIT_SHARE,
        # Refuse form posts that a browser says come from another site (CSRF).
        allow_cross_site: bool = False,
        csrf_session: Callable[[WSGIEnvironment], str | None] | None = None,
        csrf_max_age: float = 24 * 3600.0,
        honeypot: str | None = None,
        # Off unless asked for: no legitimate site should be throttled by surprise.
        client_rate_limit: str | None = None,
        trusted_proxies: int = 0,
        max_lists: int = 10,
        max_properties: int = 400,
        max_string_length: int = 100_000,
        refuse_email: EmailFilter | None = None,
        log_personal_data: bool = False,
        broker_url: str | None = None,
        celery_app: Any = None,
    ) -> None:
        if not callable(app):
            raise TypeError("KlaviyoMiddleware wraps a WSGI application (a callable)")
        self.app = app
        self.settings = build_settings(
            api_key=api_key,
            api_url=api_url,
            revision=revision,
            delivery=delivery,
            allowed_hosts=allowed_hosts,
            secret=secret,
            action_field=action_field,
            phone_region=phone_region,
            custom_source=custom_source,
            event_prefix=event_prefix,
            sms_consent=sms_consent,
            timeout=timeout,
            sync_retry_budget=sync_retry_budget,
            max_body_size=max_body_size,
            max_fields=max_fields,
            max_depth=max_depth,
            spool_path=spool_path,
            spool_durability=spool_durability,
            spool_max_size=spool_max_size,
            worker_threads=worker_threads,
            retry_max_age=retry_max_age,
            rate_limit_share=rate_limit_share,
            allow_cross_site=allow_cross_site,
            csrf_max_age=csrf_max_age,
            honeypot=honeypot,
            client_rate_limit=client_rate_limit,
            trusted_proxies=trusted_proxies,
            max_lists=max_lists,
            max_properties=max_properties,
            max_string_length=max_string_length,
            log_personal_data=log_personal_data,
            broker_url=broker_url,
        )
        if csrf_session is not None and self.settings.secret is None:
            raise ConfigurationError("csrf_session needs a secret to sign tokens with")
        self._csrf_session = csrf_session
        set_personal_data_logging(self.settings.log_personal_data)
        rate = self.settings.client_rate_limit
        self._client_limiter = ClientRateLimiter(*rate) if rate else None
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
        )
        self.delivery: Delivery = build_delivery(self.settings, self.hooks, celery_app)
        self._action_field = self.settings.action_field

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
            if self._action_field and environ.get("REQUEST_METHOD") == "POST":
                return self._maybe_action_field(environ, start_response)
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            return responses.method_not_allowed()(environ, start_response)
        return self._handle(environ, start_response, route, None)

    def _maybe_action_field(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Craft-style posts to any page with a hidden ``action`` field."""
        if media_type(environ.get("CONTENT_TYPE")) not in _FORM_TYPES:
            return self.app(environ, start_response)
        limits = self.settings.limits
        try:
            declared = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            declared = -1
        if not 0 < declared <= limits.max_body_size:
            # Not readable within our limits (no declared length, e.g. a
            # chunked upload, or too large), so not ours to judge: the app
            # gets the untouched stream.
            return self.app(environ, start_response)
        body: bytes | None = None
        try:
            body = read_body(environ, limits)
            form = parse_body(Request(environ), body, limits)
        except Exception as exc:
            # Not a form we can read, so not ours to judge: the app gets the
            # request as it came (read_body left a rewindable copy, if any).
            if not isinstance(exc, BodyError):
                log.warning("klaviyo_middleware: could not read a form post (%s); "
                            "passing it to the app", type(exc).__name__)
            if body is not None:
                environ["wsgi.input"] = io.BytesIO(body)
            return self.app(environ, start_response)
        raw_action = form.get("action")
        route = route_for_field(raw_action) if isinstance(raw_action, str) else None
        if route is None:
            environ["wsgi.input"] = io.BytesIO(body)
            return self.app(environ, start_response)
        return self._handle(environ, start_response, route, (body, form))

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
            intake = self._intake(request, route, parsed)
        except Exception:
            # The one place where anything unexpected while reading a post
            # (a parser's corner case, a site's mapping with a bug) becomes a
            # clear 400 instead of a 500. The traceback is logged redacted.
            log.exception("klaviyo_middleware: could not read a post to %s", action)
            intake = self._refuse(request, 400, {"form": [UNREADABLE]})
        if not isinstance(intake, _Accepted):
            return intake(environ, start_response)
        body, submission, forward, redirect = (
            intake.body, intake.submission, intake.forward, intake.redirect)
        outcome = self._send(request, submission)
        if outcome is not None and not outcome.accepted:
            status, failure = self._failure(outcome.error)
            answer = self._invalid_response(request, body, forward, failure, status)
            return answer(environ, start_response)
        result = {
            "success": True,
            "action": action,
            "submission_id": submission.id,
            "cancelled": outcome is None,
            "delivered": bool(outcome and outcome.delivered),
            "queued": bool(outcome and outcome.queued),
            "profile_id": outcome.profile_id if outcome else None,
        }
        environ[RESULT_KEY] = result
        if forward is not None:
            return self._forward(environ, body, forward, start_response)
        response = self._success(request, redirect, result)
        return response(environ, start_response)

    def _intake(
        self,
        request: Request,
        route: Route,
        parsed: tuple[bytes, dict[str, Any]] | None,
    ) -> _Accepted | WSGIApplication:
        """Screen, read and validate a post: a valid submission, or the answer to give."""
        environ = request.environ
        refusal = self._screen(request)
        if refusal is not None:
            return refusal
        try:
            body, form = parsed or self._read(request)
        except BodyError as exc:
            return self._refuse(request, exc.status, {"form": [exc.message]})
        environ[FORM_ENVIRON_KEY] = form
        refusal = self._check_form(request, form)
        if refusal is not None:
            return refusal
        submission, errors = self._validate(request, route, form)
        forward, redirect = self._targets(request, form, errors)
        if submission is None or errors:
            return self._invalid_response(request, body, forward, errors or {}, 400)
        return _Accepted(body, submission, forward, redirect)

    def _screen(self, request: Request) -> Response | None:
        """Refuse cross-site posts and clients over their rate, before reading the body."""
        if not self.settings.allow_cross_site:
            reason = cross_site_reason(request.headers, request.host, self._hosts)
            if reason is not None:
                log.warning("klaviyo_middleware: refused a post to %s: %s",
                            request.path_info, reason)
                return self._refuse(request, 403, {"form": [
                    "This form must be sent from this site. Reload the page and try again."]})
        if self._client_limiter is not None:
            client = client_address(request.environ, self.settings.trusted_proxies)
            wait = self._client_limiter.retry_after(client)
            if wait:
                return self._refuse(request, 429, {"form": [
                    "Too many submissions. Please wait a moment and try again."]},
                    retry_after=wait)
        return None

    def _check_form(self, request: Request, form: dict[str, Any]) -> Response | None:
        """The honeypot and the CSRF token, once the form is read."""
        honeypot = self.settings.honeypot
        if honeypot and form.get(honeypot) not in (None, ""):
            # Answer as if it worked: a bot told it failed just adapts.
            log.info("klaviyo_middleware: honeypot field filled; submission dropped")
            request.environ[RESULT_KEY] = {"success": True, "cancelled": True}
            return self._success(request, None, {"success": True})
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
                return self._refuse(request, 403, {"csrf_token": [
                    "This form has expired. Reload the page and try again."]})
        return None

    def _read(self, request: Request) -> tuple[bytes, dict[str, Any]]:
        limits = self.settings.limits
        body = read_body(request.environ, limits)
        return body, parse_body(request, body, limits)

    # -- validation -------------------------------------------------------

    def _validate(
        self, request: Request, route: Route, form: dict[str, Any]
    ) -> tuple[Submission | None, Errors]:
        name = form.get("klaviyoProfileMapping") or DEFAULT_MAPPING
        mapping = self.mappings.get(name) if isinstance(name, str) else None
        if mapping is None:
            return None, {"klaviyoProfileMapping": ["Unknown profile mapping."]}
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
                forward = redirects.forward_target(fields.text(raw_forward))
            except FieldError as exc:
                errors.setdefault("forward", []).append(str(exc))
        raw_redirect = form.get("redirect")
        if raw_redirect not in (None, ""):
            try:
                target = fields.text(raw_redirect)
                if self.settings.secret is not None:
                    target = redirects.unsign_redirect(target, self.settings.secret)
                redirect = redirects.safe_redirect(target, self._hosts, _root(request.environ))
            except FieldError as exc:
                errors.setdefault("redirect", []).append(str(exc))
        return forward, redirect

    # -- delivery -----------------------------------------------------------

    def _send(self, request: Request, submission: Submission) -> Outcome | None:
        """Hand the submission to delivery; ``None`` when a hook cancelled it."""
        if not self.hooks.run_before_send(submission, request):
            log.info("klaviyo_middleware: submission %s cancelled by a hook", submission.id)
            return None
        try:
            return self.delivery.submit(submission)
        except Exception as exc:
            # Whatever went wrong, the visitor gets a clear "try again", and
            # the log gets the traceback (submissions' reprs hold no personal data).
            log.exception("klaviyo_middleware: delivery of %s failed", submission.id)
            return Outcome(accepted=False, error=KlaviyoError(f"delivery failed: {exc!r}"))

    @staticmethod
    def _failure(error: KlaviyoError | None) -> tuple[int, Errors]:
        """What the visitor sees when a submission could not be accepted."""
        if error is not None and error.status in (400, 409, 422) and not error.transient:
            field = _field_for_pointer(error.pointer)
            return 400, {field: ["This value was not accepted. Please check it."]}
        if error is not None and error.code == "unserialisable":
            # Asking the visitor to try again would give the same result.
            return 400, {"form": [UNREADABLE]}
        return 503, {
            "form": ["We could not save your details just now. Please try again in a minute."]
        }

    # -- answers ------------------------------------------------------------

    def _success(self, request: Request, redirect: str | None, result: dict[str, Any]) -> Response:
        if responses.wants_json(request):
            return responses.json_response(200, result)
        if redirect is not None:
            return responses.see_other(redirect)
        referer = redirects.same_origin_referer(request.referer, request.host_url)
        if referer is not None:
            return responses.see_other(referer)
        return responses.success_page()

    def _invalid_response(
        self,
        request: Request,
        body: bytes,
        forward: tuple[str, str] | None,
        errors: Errors,
        status: int,
    ) -> WSGIApplication:
        environ = request.environ
        environ[ERRORS_KEY] = errors
        environ[RESULT_KEY] = {"success": False, "errors": errors}
        if forward is not None:
            def forwarding(environ: WSGIEnvironment, start_response: StartResponse
                           ) -> Iterable[bytes]:
                return self._forward(environ, body, forward, start_response)

            return forwarding
        return self._refuse(request, status, errors)

    @staticmethod
    def _refuse(
        request: Request, status: int, errors: Errors, retry_after: int | None = None
    ) -> Response:
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        elif status == 503:
            headers["Retry-After"] = _RETRY_AFTER_SECONDS
        if responses.wants_json(request):
            return responses.json_response(status, {"success": False, "errors": errors}, **headers)
        return responses.errors_page(status, errors, **headers)

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


def _root(environ: WSGIEnvironment) -> str:
    """The application's root path, as a URL path (``SCRIPT_NAME`` holds the
    raw bytes as latin-1 characters)."""
    script_name = environ.get("SCRIPT_NAME", "")
    return quote(script_name.encode("latin-1", "replace"), safe="/%")


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
