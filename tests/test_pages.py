"""docs/pages-and-languages.md: the middleware's own pages, default and
in the site's layout."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest

from klaviyo_middleware.web.pages import Page, jinja2_renderer

UPDATE = "/klaviyoConnect/api/updateProfile"
FORM_PAGE = "http://localhost/signup"


def html_problems(text: str) -> list[str]:
    return re.findall(r"<li>(.*?)</li>", text)


class TestDefaultPage:
    def test_errors_listed_under_labels_linked_to_the_form(self, app, klaviyo):
        response = app.post(UPDATE, {"email": "nope", "phone_number": "12"}, status=400,
                            headers={"Referer": FORM_PAGE})
        assert response.content_type == "text/html"
        assert html_problems(response.text) == [
            '<strong><a href="http://localhost/signup#email">Email address</a></strong>: '
            "Enter a valid email address.",
            '<strong><a href="http://localhost/signup#phone_number">Phone number</a></strong>: '
            "Enter a valid phone number in international format, e.g. +44 20 7946 0958.",
        ]
        assert '<a href="http://localhost/signup">Back to the form</a>' in response.text
        assert "javascript:" not in response.text

    def test_readable_and_accessible(self, app, klaviyo):
        response = app.post(UPDATE, {"email": "nope"}, status=400)
        assert '<html lang="en">' in response.text
        assert response.headers["Content-Language"] == "en"
        assert "<title>Error: Please check the form</title>" in response.text
        assert 'role="alert"' in response.text
        assert "font-family:system-ui" in response.text
        assert 'name="viewport"' in response.text
        assert response.headers["Cache-Control"] == "no-store"

    def test_german(self, app, klaviyo):
        response = app.post(UPDATE, {"email": "nope"}, status=400,
                            headers={"Accept-Language": "de-DE,de;q=0.9", "Referer": FORM_PAGE})
        assert '<html lang="de">' in response.text
        assert "<title>Fehler: Bitte prüfen Sie das Formular</title>" in response.text
        assert "E-Mail-Adresse</a></strong>: Geben Sie eine gültige E-Mail-Adresse ein." in \
            response.text
        assert ">Zurück zum Formular</a>" in response.text

    def test_a_foreign_referer_gets_no_link(self, app, klaviyo):
        response = app.post(UPDATE, {"email": "nope"}, status=400,
                            headers={"Referer": "https://evil.example/form"},
                            extra_environ={"HTTP_SEC_FETCH_SITE": "same-origin"})
        assert "evil.example" not in response.text
        assert html_problems(response.text) == [
            "<strong>Email address</strong>: Enter a valid email address."]

    def test_problems_with_the_whole_form_have_no_label(self, app, klaviyo):
        response = app.post(UPDATE, b"\xff\xfe", status=400,
                            content_type="application/x-www-form-urlencoded")
        assert html_problems(response.text) == ["The submission is not valid UTF-8."]

    def test_everything_from_the_request_is_escaped(self, make_app, klaviyo):
        app = make_app(refuse_email=lambda email: "<script>alert(1)</script>")
        response = app.post(UPDATE, {"email": "a@example.com"}, status=400,
                            headers={"Referer": 'http://localhost/"><script>x</script>'})
        assert "<script>" not in response.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text

    def test_thank_you_page_in_spanish(self, app, klaviyo):
        response = app.post(UPDATE, {"email": "a@example.com"},
                            headers={"Accept-Language": "es"})
        assert response.status_int == 200
        assert "<h1>Gracias</h1>" in response.text
        assert "Sus datos se han guardado." in response.text
        assert "role=" not in response.text

    def test_refusals_in_the_visitors_language(self, app, klaviyo):
        response = app.post(UPDATE, {"email": "a@example.com"}, status=403,
                            headers={"Origin": "https://evil.example", "Accept-Language": "fr"})
        assert "Le formulaire n\u2019a pas pu être envoyé" in response.text
        assert "Ce formulaire doit être envoyé depuis ce site." in response.text

    def test_rate_limited_page_keeps_retry_after(self, make_app, klaviyo):
        app = make_app(client_rate_limit="1/minute")
        app.post(UPDATE, {"email": "a@example.com"})
        response = app.post(UPDATE, {"email": "a@example.com"}, status=429,
                            headers={"Accept-Language": "nl"})
        assert int(response.headers["Retry-After"]) > 0
        assert "Te veel inzendingen" in response.text


class TestSiteLayout:
    def test_the_renderer_gets_the_translated_page(self, make_app, klaviyo):
        seen: list[Page] = []

        def renderer(page: Page) -> str:
            seen.append(page)
            return f"<site>{page.title}|{page.errors}</site>"

        app = make_app(page_renderer=renderer)
        response = app.post(UPDATE, {"email": "nope"}, status=400,
                            headers={"Accept-Language": "de", "Referer": FORM_PAGE})
        assert response.text == (
            "<site>Bitte prüfen Sie das Formular|"
            "{'email': ['Geben Sie eine gültige E-Mail-Adresse ein.']}</site>")
        page = seen[0]
        assert (page.status, page.language, page.back_url) == (400, "de", FORM_PAGE)
        assert page.problems[0].label == "E-Mail-Adresse"
        assert page.problems[0].href == FORM_PAGE + "#email"
        assert page.request is not None and page.request.path_info == UPDATE

    def test_none_means_the_default_page(self, make_app, klaviyo):
        app = make_app(page_renderer=lambda page: None)
        response = app.post(UPDATE, {"email": "nope"}, status=400)
        assert "<title>Error: Please check the form</title>" in response.text

    def test_a_broken_renderer_never_makes_a_500(self, make_app, klaviyo, caplog):
        def broken(page: Page) -> str:
            raise jinja2.TemplateNotFound("klaviyo/page.html")

        app = make_app(page_renderer=broken)
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                response = app.post(UPDATE, {"email": "nope"}, status=400)
        assert "Enter a valid email address." in response.text
        # One traceback for the failure, not one per error page.
        assert caplog.text.count("page_renderer failed") == 1

    def test_jinja2_template(self, make_app, klaviyo):
        environment = jinja2.Environment(autoescape=True, loader=jinja2.DictLoader({
            "base.html": "<html lang='{{ page.language }}'><body class=site>"
                         "{% block content %}{% endblock %}</body></html>",
            "klaviyo/page.html": "{% extends 'base.html' %}{% block content %}"
                                 "<h1>{{ page.title }}</h1>{% for p in page.problems %}"
                                 "<p id=e-{{ p.field }}>{{ p.label }}: {{ p.message }}</p>"
                                 "{% endfor %}{% endblock %}",
        }))
        app = make_app(page_renderer=jinja2_renderer(environment, "klaviyo/page.html"),
                       refuse_email=lambda email: "<b>no</b>")
        response = app.post(UPDATE, {"email": "a@example.com"}, status=400,
                            headers={"Accept-Language": "fr"})
        assert response.text == (
            "<html lang='fr'><body class=site><h1>Veuillez vérifier le formulaire</h1>"
            "<p id=e-email>Adresse e-mail: &lt;b&gt;no&lt;/b&gt;</p></body></html>")

    @pytest.mark.parametrize("status", [200, 400])
    def test_status_and_headers_are_the_middlewares(self, make_app, klaviyo, status):
        app = make_app(page_renderer=lambda page: "<p>site</p>")
        form = {"email": "nope" if status == 400 else "a@example.com"}
        response = app.post(UPDATE, form, status=status)
        assert response.text == "<p>site</p>"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Language"] == "en"


def test_a_failing_site_template_never_logs_the_form_in_clear(make_app, klaviyo, caplog):
    """A site template that trips over a form value: the traceback names the
    value, and the log still shows it masked (pages.py logs through the
    redacting logger, as every module of the package does)."""

    def renderer(page: Any) -> str:
        raise KeyError("sarah.connor@example.com")

    app = make_app(page_renderer=renderer)
    app.post("/klaviyoConnect/api/identify", {"email": "sarah.connor@example"}, status=400)
    assert "page_renderer failed" in caplog.text
    assert "sarah.connor@example.com" not in caplog.text
    assert "s***@example.com" in caplog.text


def test_every_logger_of_the_package_redacts():
    import importlib
    import logging
    import pkgutil

    import klaviyo_middleware
    from klaviyo_middleware.redact import RedactingFilter

    unfiltered = []
    for module_info in pkgutil.walk_packages(klaviyo_middleware.__path__, "klaviyo_middleware."):
        if ".contrib." in module_info.name or module_info.name.endswith(".__main__"):
            continue  # optional dependencies, or a command; their source is checked below
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if isinstance(value, logging.Logger) and not any(
                    isinstance(item, RedactingFilter) for item in value.filters):
                unfiltered.append(module_info.name)
    assert unfiltered == []
    sources = Path(klaviyo_middleware.__file__).parent.rglob("*.py")
    assert [path.name for path in sources
            if "logging.getLogger(" in path.read_text() and path.name != "redact.py"] == []


def test_the_thank_you_page_leads_back_to_the_page(make_app, klaviyo):
    app = make_app()
    page = app.post("/klaviyoConnect/api/identify", {"email": "a@example.com"},
                    headers={"Referer": "http://localhost/newsletter?x=1"})
    # A same-origin Referer answers 303 back to it; without one, the page
    # itself: then the back link needs a Referer the browser did not send.
    assert page.status_int == 303
    from webob import Request

    from klaviyo_middleware.i18n.catalogs import Languages
    from klaviyo_middleware.web.pages import build_page

    request = Request.blank("/klaviyoConnect/api/identify",
                            headers={"Referer": "http://localhost/newsletter"})
    built = build_page(request, 200, Languages(None, None, None), "de")
    assert (built.back_url, built.back_text) == ("http://localhost/newsletter",
                                                 "Zurück zur Seite")
