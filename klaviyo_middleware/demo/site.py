"""``klaviyo-middleware demo``: a small site wrapped in the middleware.

With ``KLAVIYO_PRIVATE_API_KEY`` set it talks to Klaviyo. Without one it
delivers to a :class:`~klaviyo_middleware.testing.FakeKlaviyo` mounted in the
same server at ``/_fake-klaviyo/`` (its whole state at
``/_fake-klaviyo/_state``), and ``/dashboard`` shows profiles, lists,
consent, events and the spool updating live.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webob import Response

from klaviyo_middleware.delivery.spool.admin import SpoolAdmin
from klaviyo_middleware.delivery.spool.store import ENV_SPOOL_PATH
from klaviyo_middleware.demo.dashboard import DASHBOARD
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.client import ENV_API_KEY
from klaviyo_middleware.middleware import KlaviyoMiddleware
from klaviyo_middleware.redact import redact
from klaviyo_middleware.testing import FakeKlaviyo
from klaviyo_middleware.testing.server import make

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

FAKE_PREFIX = "/_fake-klaviyo"
DEMO_KEY = "pk_demo_not_a_real_key"
ENV_LIST_ID = "KLAVIYO_DEMO_LIST_ID"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>klaviyo_middleware demo</title>
<style>body{{font:16px system-ui;max-width:46rem;margin:2rem auto;padding:0 1rem}}
form{{border:1px solid #ccc;padding:1rem;margin:1rem 0}}label{{display:block;margin:.4rem 0}}
.note{{background:#fff7d6;padding:.6rem}}pre{{background:#f4f4f4;padding:.6rem;overflow:auto}}
</style></head><body>
<h1>klaviyo_middleware demo</h1>
<p class="note">{note}</p>

<form id="newsletter" method="post" action="/klaviyoConnect/api/updateProfile">
  <h2>Newsletter</h2>
  <input type="hidden" name="list" value="{list_id}">
  <input type="hidden" name="redirect" value="/thanks">
  <label>Email <input type="email" id="email" name="email" required></label>
  <label>First name <input id="first_name" name="first_name"></label>
  <button>Subscribe</button>
</form>

<form id="contact" method="post" action="/klaviyo-connect/api/track">
  <h2>Contact us</h2>
  <input type="hidden" name="event[name]" value="Contact form">
  <input type="hidden" name="subscribe" value="0">
  <input type="hidden" name="redirect" value="/thanks">
  <label>Email <input type="email" name="email" required></label>
  <label>Message <textarea name="event[extra][message]"></textarea></label>
  <button>Send</button>
</form>

<form id="sms" method="post" action="/actions/klaviyoconnect/api/track">
  <h2>Text me offers</h2>
  <input type="hidden" name="list" value="{list_id}">
  <input type="hidden" name="subscribe" value="1">
  <input type="hidden" name="redirect" value="thanks">
  <label>Mobile number <input type="tel" id="phone_number" name="profile[phone_number]"
    placeholder="+14155552671" pattern="\\+[1-9][0-9]{{7,14}}" required></label>
  <p><small>By subscribing you agree to receive marketing text messages from the demo
  shop. Reply STOP to cancel.</small></p>
  <button>Text me</button>
</form>

<form id="ajax" method="post" action="/klaviyoConnect/api/updateProfile">
  <h2>AJAX signup</h2>
  <input type="hidden" name="list" value="{list_id}">
  <label>Email <input name="email"></label>
  <output id="ajax-result"></output>
  <button>Subscribe</button>
</form>
<script>
document.getElementById("ajax").addEventListener("submit", async (event) => {{
  event.preventDefault();
  const answer = await fetch(event.target.action, {{method: "POST",
    headers: {{"Accept": "application/json"}}, body: new FormData(event.target)}});
  const data = await answer.json();
  document.getElementById("ajax-result").textContent = data.success
    ? "Subscribed!" : Object.values(data.errors).flat().join(" ");
}});
</script>
<p><a href="/dashboard">Dashboard: what Klaviyo has, and the spool</a></p>
</body></html>
"""


class DemoSite:
    """The inner application: pages the middleware never needs to see."""

    def __init__(self, fake: FakeKlaviyo | None, list_id: str, spool_path: str | None) -> None:
        self.fake = fake
        self.list_id = list_id
        self.spool_path = spool_path

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/":
            note = (
                "No KLAVIYO_PRIVATE_API_KEY is set: submissions go to a fake Klaviyo in this "
                f"server ({FAKE_PREFIX}/). The newsletter list uses double opt-in: confirm "
                "the subscription from the dashboard. The fake and the demo's spool live "
                "in this process only: a restart starts both empty."
                if self.fake is not None
                else "Submissions go to your Klaviyo account."
            )
            body = PAGE.format(note=escape(note), list_id=escape(self.list_id))
            response = Response(body, content_type="text/html", charset="utf-8")
        elif path == "/thanks":
            response = Response(
                '<!doctype html><title>Thanks</title><h1>Thank you!</h1>'
                '<p><a href="/">Back</a> · <a href="/dashboard">Dashboard</a></p>',
                content_type="text/html",
                charset="utf-8",
            )
        elif path == "/dashboard":
            response = Response(DASHBOARD, content_type="text/html", charset="utf-8")
        elif path == "/_demo/spool":
            response = Response(json=self._spool())
        else:
            response = Response("Not found", status=404, content_type="text/plain")
        return response(environ, start_response)

    def _spool(self) -> dict[str, Any]:
        if self.spool_path is None or not Path(self.spool_path).exists():
            return {"stats": None, "dead": []}
        admin = SpoolAdmin(self.spool_path)
        try:
            dead = [
                {"id": letter.id, "email": redact(letter.email),
                 "error": redact(str(letter.error.get("message", "")))}
                for letter in admin.dead_letters()
            ]
            return {"stats": admin.stats(), "dead": dead}
        finally:
            admin.close()


def build_demo(base_url: str, environ: dict[str, str] | None = None,
               real: bool = False) -> WSGIApplication:
    """The whole demo as one WSGI app; ``base_url`` is where it is served.

    It delivers to its own fake Klaviyo unless asked for ``real``: a key a
    user exported for their site (the README shows one) must never turn a
    demo into sign-ups on a real account by surprise."""
    env = os.environ if environ is None else environ
    if real and not env.get(ENV_LIST_ID):
        # The demo's own list id means nothing in a real account: its forms
        # would sign people up to a list that is not there.
        raise ConfigurationError(
            f"demo --real needs {ENV_LIST_ID} set to the id of one of your Klaviyo lists "
            "(Lists & Segments → the list → Settings → List ID)")
    list_id = env.get(ENV_LIST_ID, "Y6nRLr")
    fake = None
    scratch: str | None = None
    options: dict[str, Any] = {"custom_source": "klaviyo_middleware demo"}
    if not real:
        fake = FakeKlaviyo(lists={list_id: "double_opt_in"})
        options.update(api_key=DEMO_KEY, api_url=base_url + FAKE_PREFIX)
        # The fake keeps its state in memory, so the spool lives as long:
        # both start empty with each run (the page says so), and nothing a
        # fake-backed demo accepted can ever reach a real account.
        spool_path = env.get(ENV_SPOOL_PATH)
        if not spool_path:
            scratch = tempfile.mkdtemp(prefix="klaviyo-middleware-demo-")
            spool_path = str(Path(scratch) / "spool.sqlite3")
        options["spool_path"] = spool_path
    wrapped = KlaviyoMiddleware(DemoSite(fake, list_id, None), **options)
    site = wrapped.app
    assert isinstance(site, DemoSite)
    site.spool_path = wrapped.settings.spool_path

    def demo(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if fake is not None and path.startswith(FAKE_PREFIX + "/"):
            environ["PATH_INFO"] = path[len(FAKE_PREFIX) :]
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + FAKE_PREFIX
            return fake(environ, start_response)
        return wrapped(environ, start_response)

    demo.middleware = wrapped  # type: ignore[attr-defined]
    demo.fake = fake  # type: ignore[attr-defined]
    demo.scratch = scratch  # type: ignore[attr-defined]
    return demo


def serve(host: str, port: int, real: bool = False) -> None:
    """Serve the demo until Ctrl+C. Raises ``OSError`` when the port is taken,
    before anything else is started; ``ConfigurationError`` for ``real``
    without a usable key."""
    # SIGTERM (a container stopping, `kill`) ends it as Ctrl+C does, at any
    # moment from here on: the senders closed and the scratch spool removed.
    signal.signal(signal.SIGTERM, _interrupt)
    demo: Any = None
    try:
        with make(host, port, _not_ready) as server:
            port = server.server_port  # the one chosen, for --port 0
            demo = build_demo(f"http://{host}:{port}", real=real)
            server.set_app(demo)
            _say_where(host, port, demo.middleware.settings, real)
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if demo is not None:
            demo.middleware.close()
            if demo.scratch is not None:
                shutil.rmtree(demo.scratch, ignore_errors=True)


def _say_where(host: str, port: int, settings: Any, real: bool) -> None:
    print(f"klaviyo_middleware demo on http://{host}:{port}/  (Ctrl+C stops it)")
    if real:
        key = settings.api_key
        print(f"Delivering to YOUR Klaviyo account ({settings.api_url}, key "
              f"{key[:3]}…{key[-4:]}), list {os.environ.get(ENV_LIST_ID, 'Y6nRLr')}, "
              f"through the spool {settings.spool_path}")
        return
    if os.environ.get(ENV_API_KEY):
        print(f"{ENV_API_KEY} is set but not used: the demo delivers to its fake "
              "Klaviyo (`klaviyo-middleware demo --real` uses your account).")
    print(f"Delivering to the fake Klaviyo at {FAKE_PREFIX}/ through a scratch "
          f"spool ({settings.spool_path}); watch http://{host}:{port}/dashboard")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _not_ready(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]
