"""The pages the middleware answers a browser with itself, in the site's look
and the visitor's language (docs/pages-and-languages.md).

A :class:`Page` holds everything a template needs, already translated; a
site renders it with its own layout through ``page_renderer`` (helpers for
Jinja2 here, for Django in ``klaviyo_middleware.contrib.django``). Without
one, or when the site's renderer fails, :func:`default_html` writes a small,
readable page: system font, the problems in a list with each field's label,
``lang`` set, a real link back to the form.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

from webob import Request

from klaviyo_middleware import notices
from klaviyo_middleware.i18n.catalogs import Languages
from klaviyo_middleware.i18n.message import Message, msg
from klaviyo_middleware.redact import get_logger
from klaviyo_middleware.web.redirects import same_origin_referer

log = get_logger(__name__)

# The label a visitor reads for a field's problem; fields not named here are
# shown by their form name, and problems with the whole form have no label.
FIELD_LABELS: dict[str, Message] = {
    "email": msg("Email address"),
    "phone_number": msg("Phone number"),
    "first_name": msg("First name"),
    "last_name": msg("Last name"),
    "title": msg("Job title"),
    "organization": msg("Organization"),
    "address1": msg("Address"),
    "address2": msg("Address line 2"),
    "city": msg("City"),
    "region": msg("State or region"),
    "country": msg("Country"),
    "zip": msg("Postal code"),
    "lists": msg("Lists"),
    "sms_consent": msg("SMS consent"),
}
_WHOLE_FORM = frozenset({"form", "csrf_token"})

# Title and opening sentence by status: what happened, then what to do.
_NOT_SAVED = msg("Your details were not saved.")
_HEADINGS: dict[int, tuple[Message, Message]] = {
    200: (msg("Thank you"), msg("Your details have been saved.")),
    400: (msg("Please check the form"), msg("Correct the following and send the form again:")),
    403: (msg("The form could not be sent"), _NOT_SAVED),
    413: (msg("The form is too large"), _NOT_SAVED),
    415: (msg("The form could not be read"), _NOT_SAVED),
    429: (msg("Too many submissions"), _NOT_SAVED),
    503: (msg("Please try again shortly"), _NOT_SAVED),
}
_BACK = msg("Back to the form")
_BACK_AFTER = msg("Back to the page")


@dataclass(frozen=True)
class Problem:
    """One thing the visitor should fix."""

    field: str          # the form's name for it (``email``, ``profile[first_name]``, ``form``)
    label: str | None   # what to call the field, translated; ``None``: the whole form
    message: str        # translated
    href: str | None    # the form page at that field, when the form page is known


@dataclass(frozen=True)
class Page:
    """An answer page, translated, for the site's template or the default one."""

    status: int
    language: str
    title: str
    lead: str
    problems: tuple[Problem, ...] = ()
    back_url: str | None = None
    back_text: str = ""
    retry_after: int | None = None
    request: Request | None = field(default=None, compare=False, repr=False)

    @property
    def is_error(self) -> bool:
        return self.status >= 400

    @property
    def errors(self) -> dict[str, list[str]]:
        """``{field: [message, ...]}``, translated, as a template may prefer."""
        grouped: dict[str, list[str]] = {}
        for problem in self.problems:
            grouped.setdefault(problem.field, []).append(problem.message)
        return grouped


# The site's renderer: HTML for the page, or ``None`` for the default.
PageRenderer = Callable[[Page], "str | None"]


def build_page(
    request: Request,
    status: int,
    languages: Languages,
    language: str,
    errors: Mapping[str, list[str]] | None = None,
    retry_after: int | None = None,
) -> Page:
    def tr(text: str) -> str:
        return languages.translate(text, language)

    title, lead = _HEADINGS.get(status, _HEADINGS[400])
    # The way back to the page the form is on: to correct it, or, after a
    # thank-you, to carry on where the visitor was.
    back = same_origin_referer(request.referer, request.host_url)
    problems = tuple(
        Problem(
            field=name,
            label=_label(name, tr),
            message=tr(message),
            # The usual convention: a field's id is its name.
            href=f"{_without_fragment(back)}#{_plain_name(name)}"
            if back and name not in _WHOLE_FORM else None,
        )
        for name, messages in (errors or {}).items()
        for message in messages
    )
    return Page(status=status, language=language, title=tr(title), lead=tr(lead),
                problems=problems, back_url=back,
                back_text=tr(_BACK if status >= 400 else _BACK_AFTER),
                retry_after=retry_after, request=request)


def render(page: Page, renderer: PageRenderer | None, languages: Languages) -> str:
    """The site's page if it gives one; the default if it has none or fails
    (a broken template must not turn a visitor's error into a 500)."""
    if renderer is not None:
        try:
            html = renderer(page)
        except Exception as exc:
            # Once per kind of failure: a missing template fails every error
            # page alike, and one traceback says all there is to say.
            key = ("page_renderer", type(exc).__name__, str(exc)[:200])
            if notices.first_time(key):
                log.exception("klaviyo_middleware: page_renderer failed; showing the default "
                              "page (said once for this failure)")
        else:
            if html is not None:
                return str(html)
    return default_html(page, languages)


def default_html(page: Page, languages: Languages) -> str:
    title = (languages.translate(msg("Error: {title}", title=page.title), page.language)
             if page.is_error else page.title)
    items = "\n".join(_problem_html(problem) for problem in page.problems)
    problems = f'<ul class="problems">\n{items}\n</ul>\n' if items else ""
    back = (f'<p><a href="{escape(page.back_url)}">{escape(page.back_text)}</a></p>\n'
            if page.back_url else "")
    role = ' role="alert"' if page.is_error else ""
    return _DEFAULT.format(lang=escape(page.language), title=escape(title),
                           heading=escape(page.title), lead=escape(page.lead), role=role,
                           problems=problems, back=back)


def jinja2_renderer(environment: Any, template: str) -> PageRenderer:
    """A ``page_renderer`` rendering ``template`` from a Jinja2 environment
    (``app.jinja_env`` in Flask) with ``page`` in its context."""

    def render_with_jinja2(page: Page) -> str:
        return str(environment.get_template(template).render(page=page))

    return render_with_jinja2


def _problem_html(problem: Problem) -> str:
    message = escape(problem.message)
    if problem.label is None:
        return f"<li>{message}</li>"
    label = escape(problem.label)
    if problem.href:
        label = f'<a href="{escape(problem.href)}">{label}</a>'
    return f"<li><strong>{label}</strong>: {message}</li>"


def _label(name: str, tr: Callable[[str], str]) -> str | None:
    if name in _WHOLE_FORM:
        return None
    known = FIELD_LABELS.get(_plain_name(name))
    return tr(known) if known is not None else name


def _plain_name(name: str) -> str:
    """``profile[location][city]`` → ``city``; ``profile[email]`` → ``email``."""
    if name.startswith("profile[") and name.endswith("]"):
        return name[:-1].rsplit("[", 1)[-1]
    return name


def _without_fragment(url: str) -> str:
    return url.split("#", 1)[0]


_DEFAULT = """<!doctype html>
<html lang="{lang}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;line-height:1.5;
margin:0;padding:2rem 1rem;color:#1a1a1a;background:#fff}}
main{{max-width:36rem;margin:0 auto}}
h1{{font-size:1.6rem;line-height:1.25;margin:0 0 1rem}}
.problems{{border-left:4px solid #b00020;padding:.25rem 0 .25rem 1.5rem;margin:1rem 0}}
.problems li{{margin:.25rem 0}}
a{{color:#0645ad}}
@media (prefers-color-scheme:dark){{body{{color:#eee;background:#121212}}a{{color:#8ab4f8}}
.problems{{border-color:#ff6b81}}}}
</style></head>
<body>
<main>
<h1>{heading}</h1>
<div{role}>
<p>{lead}</p>
{problems}</div>
{back}</main>
</body>
</html>
"""
