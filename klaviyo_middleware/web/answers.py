"""What the middleware answers a visitor, in their language: success, refusal, its pages.

The middleware decides *what* happened to a post (accepted, refused and
why, forwarded); this module decides how the visitor hears it — JSON for
scripts (Craft's own shapes under ``craft_compat``), a redirect, or one of
the middleware's small pages in the site's layout — and in which language.
As WhiteNoise keeps its responders apart from its middleware, the request
flow stays readable in ``middleware.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from webob import Request, Response

from klaviyo_middleware.i18n.catalogs import Languages
from klaviyo_middleware.redact import get_logger
from klaviyo_middleware.web import pages, redirects, responses
from klaviyo_middleware.web.pages import PageRenderer
from klaviyo_middleware.web.routes import ACTION_PATHS
from klaviyo_middleware.web.validation import Errors

if TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed.wsgi import WSGIEnvironment

log = get_logger(__name__)

# Characters a path keeps when it is written into a Location header.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
# How long a visitor is told to wait when Klaviyo cannot take a submission.
_RETRY_AFTER_SECONDS = "60"


class Answers:
    """The visitor-facing answers of one middleware.

    :param languages: the catalogs offered, and negotiation.
    :param page_renderer: renders the middleware's pages in the site's layout.
    :param language_loader: the site's choice of language for a request.
    :param craft_compat: answer as the Craft plugin did (docs/migrating-from-craft.md).
    """

    def __init__(self, languages: Languages, page_renderer: PageRenderer | None,
                 language_loader: Callable[[WSGIEnvironment], Any] | None,
                 craft_compat: bool) -> None:
        self.languages = languages
        self.page_renderer = page_renderer
        self.language_loader = language_loader
        self.craft_compat = craft_compat

    def success(self, request: Request, redirect: str | None,
                result: dict[str, Any]) -> Response:
        if responses.wants_json(request):
            # craft_compat: the plugin's bare "success", which Foster
            # Commerce's components test with response === 'success'.
            return responses.json_response(200, "success" if self.craft_compat else result)
        if redirect is not None:
            return responses.see_other(redirect)
        if self.craft_compat and ACTION_PATHS.get(request.path_info) is None:
            # Craft's redirectToPostedUrl(): back to the page the form was
            # posted to (its path, as Craft does), not a thank-you page.
            return responses.see_other(posted_page(request.environ))
        referer = redirects.same_origin_referer(request.referer, request.host_url)
        if referer is not None:
            return responses.see_other(referer)
        return self.page(request, 200)

    def refusal(self, request: Request, status: int, errors: Errors, language: str,
                retry_after: int | None = None) -> Response:
        """The refusal as JSON or as a page, in ``language`` (chosen once per
        request: a site's ``language_loader`` may be costly)."""
        if responses.wants_json(request):
            translated = self.translated(errors, language)
            payload: dict[str, Any] = {"success": False, "errors": translated}
            if self.craft_compat:
                # Craft's own failure answer (a controller's asFailure()): a
                # message beside the errors; never the string "success".
                payload = {"message": _first_message(translated), "errors": translated}
            return responses.json_response(
                status, payload,
                **retry_headers(status, retry_after), **{"Content-Language": language})
        return self.page(request, status, errors, retry_after, language)

    def page(self, request: Request, status: int, errors: Errors | None = None,
             retry_after: int | None = None, language: str | None = None) -> Response:
        """One of the middleware's own HTML pages, in the visitor's language
        and, with ``page_renderer``, the site's layout."""
        language = language or self.language(request)
        page = pages.build_page(request, status, self.languages, language, errors, retry_after)
        html = pages.render(page, self.page_renderer, self.languages)
        return responses.html_response(status, html, language,
                                       **retry_headers(status, retry_after))

    def language(self, request: Request) -> str:
        if self.language_loader is not None:
            try:
                chosen = self.language_loader(request.environ)
            except Exception:
                log.exception("klaviyo_middleware: language_loader failed")
                chosen = None
            if isinstance(chosen, str) and chosen:
                tag = self.languages.offered_tag(chosen)
                if tag is not None:
                    return tag
        return self.languages.negotiate(request.headers.get("Accept-Language"))

    def translated(self, errors: Errors, language: str) -> Errors:
        return {name: [self.languages.translate(message, language) for message in messages]
                for name, messages in errors.items()}


def retry_headers(status: int, retry_after: int | None) -> dict[str, str]:
    """When to try again: the limiter's wait, or a minute when Klaviyo is away."""
    if retry_after is not None:
        return {"Retry-After": str(retry_after)}
    if status == 503:
        return {"Retry-After": _RETRY_AFTER_SECONDS}
    return {}


def posted_page(environ: WSGIEnvironment) -> str:
    """The path of the page a form was posted to, for a ``Location`` header;
    never protocol-relative, whatever ``PATH_INFO`` holds."""
    path = environ.get("PATH_INFO", "")
    page = app_root(environ) + quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE)
    return "/" + page.lstrip("/")


def app_root(environ: WSGIEnvironment) -> str:
    """The application's root path, as a URL path (``SCRIPT_NAME`` holds the
    raw bytes as latin-1 characters)."""
    script_name = environ.get("SCRIPT_NAME", "")
    return quote(script_name.encode("latin-1", "replace"), safe="/%")


def _first_message(errors: Errors) -> str:
    return next((message for messages in errors.values() for message in messages), "")
