"""The demo in a real browser: headless Debian Chromium driven by Playwright.

No browser is downloaded: Playwright launches the system's ``chromium``
(installed by ``make test`` / ``.ci/run``). Locally the test skips when
either is missing; in CI it must run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from klaviyo_middleware.demo.site import build_demo
from klaviyo_middleware.testing.server import BackgroundServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's own checks start it: no sandbox as root, and nothing that
# phones home (the network is closed).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _requirements() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    if not os.path.exists(CHROMIUM):
        return "no chromium at " + CHROMIUM
    return None


missing = _requirements()
if missing and not os.environ.get("CI"):
    pytest.skip(f"browser test needs Chromium and Playwright: {missing}",
                allow_module_level=True)


@pytest.fixture
def demo(tmp_path) -> Iterator[tuple[str, object]]:
    server = BackgroundServer(lambda environ, start_response: [])
    # The demo must know its own address to reach its fake Klaviyo.
    app = build_demo(server.url, environ={"KLAVIYO_SPOOL_PATH": str(tmp_path / "b.sqlite3")})
    server.server.set_app(app)
    with server:
        yield server.url, app
    app.middleware.close()  # type: ignore[attr-defined]


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser) -> object:
    return browser.new_page()  # type: ignore[attr-defined]


def test_signup_ajax_error_and_dashboard(demo, page):
    from playwright.sync_api import expect

    base, _ = demo
    page.goto(base + "/")
    newsletter = page.locator("#newsletter")
    newsletter.locator("input[name=email]").fill("browser@example.com")
    newsletter.locator("input[name=first_name]").fill("Bea")
    newsletter.locator("button").click()
    page.wait_for_url(base + "/thanks")
    expect(page.locator("h1")).to_have_text("Thank you!")

    page.goto(base + "/")
    contact = page.locator("#contact")
    contact.locator("input[name=email]").fill("browser@example.com")
    contact.locator("textarea").fill("Hello from a real browser")
    contact.locator("button").click()
    page.wait_for_url(base + "/thanks")

    page.goto(base + "/")
    ajax = page.locator("#ajax")
    ajax.locator("input[name=email]").fill("not-an-email")
    ajax.locator("button").click()
    expect(page.locator("#ajax-result")).to_have_text("Enter a valid email address.")
    assert page.url == base + "/"  # no navigation: the error came back as JSON

    page.goto(base + "/dashboard")
    profiles = page.locator("#profiles tbody")
    expect(profiles).to_contain_text("browser@example.com", timeout=15_000)
    expect(profiles).to_contain_text("Bea")
    expect(profiles).to_contain_text("PENDING")
    expect(page.locator("#events tbody")).to_contain_text("Contact form", timeout=15_000)
    expect(page.locator("#events tbody")).to_contain_text("Hello from a real browser")
    expect(page.locator("#spool")).to_contain_text("delivered: 2")

    # The double opt-in email's link, clicked from the dashboard.
    page.locator("#profiles button").click()
    expect(profiles).to_contain_text("SUBSCRIBED", timeout=15_000)
    expect(page.locator("#lists tbody")).to_contain_text("browser@example.com")


SHOP_TEMPLATES = {
    "layout.html": "<!doctype html><html lang='{{ page.language if page else 'de' }}'>"
                   "<head><meta charset=utf-8><title>Laden</title></head>"
                   "<body><header id=shop>Unser Laden</header>{% block body %}{% endblock %}"
                   "</body></html>",
    "signup.html": "{% extends 'layout.html' %}{% block body %}"
                   "<form method=post action=/klaviyoConnect/api/updateProfile>"
                   "<label for=email>E-Mail</label><input id=email name=email>"
                   "<button>Anmelden</button></form>{% endblock %}",
    "klaviyo.html": "{% extends 'layout.html' %}{% block body %}<h1>{{ page.title }}</h1>"
                    "<ul id=problems>{% for p in page.problems %}<li><a href='{{ p.href }}'>"
                    "{{ p.label }}</a>: {{ p.message }}</li>{% endfor %}</ul>{% endblock %}",
}


@pytest.fixture
def german_shop() -> Iterator[str]:
    flask = pytest.importorskip("flask")
    import jinja2

    from klaviyo_middleware.contrib.flask import KlaviyoConnect
    from klaviyo_middleware.testing import serve_fake_klaviyo

    with serve_fake_klaviyo() as fake:
        app = flask.Flask(__name__)
        app.jinja_loader = jinja2.DictLoader(SHOP_TEMPLATES)
        app.add_url_rule("/", "signup", lambda: flask.render_template("signup.html", page=None))
        app.config.update(KLAVIYO_API_KEY="pk_browser_test_key_00000000000",
                          KLAVIYO_API_URL=fake.url, KLAVIYO_DELIVERY="sync",
                          KLAVIYO_LANGUAGES="en de", KLAVIYO_PAGE_TEMPLATE="klaviyo.html")
        KlaviyoConnect(app)
        with BackgroundServer(app) as server:
            yield server.url


def test_a_german_visitor_sees_the_error_in_german_in_the_shops_layout(browser, german_shop):
    from playwright.sync_api import expect

    page = browser.new_page(locale="de-DE")  # type: ignore[attr-defined]
    page.goto(german_shop + "/")
    page.locator("input[name=email]").fill("keine-adresse")
    page.locator("button").click()
    expect(page.locator("h1")).to_have_text("Bitte prüfen Sie das Formular")
    expect(page.locator("#problems li")).to_have_text(
        "E-Mail-Adresse: Geben Sie eine gültige E-Mail-Adresse ein.")
    expect(page.locator("#shop")).to_have_text("Unser Laden")
    assert page.locator("html").get_attribute("lang") == "de"
    # The label links back to the field on the form page.
    page.locator("#problems a").click()
    page.wait_for_url(german_shop + "/#email")
    expect(page.locator("#email")).to_be_visible()
