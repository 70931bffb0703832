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
def page() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        try:
            yield browser.new_page()
        finally:
            browser.close()


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
