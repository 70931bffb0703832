"""``klaviyo-middleware demo``: a small site wrapped in the middleware.

With ``KLAVIYO_PRIVATE_API_KEY`` set it talks to Klaviyo. Without one it
delivers to :class:`RecordingKlaviyo`, mounted in the same server at
``/_fake-klaviyo/``, which answers the way Klaviyo's endpoints answer a
successful call and keeps the requests it received so the demo can show
exactly what would have been sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from html import escape
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from webob import Request, Response

from .config import ENV_API_KEY
from .middleware import KlaviyoMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

FAKE_PREFIX = "/_fake-klaviyo"
DEMO_KEY = "pk_demo_not_a_real_key"
ENV_LIST_ID = "KLAVIYO_DEMO_LIST_ID"


class RecordingKlaviyo:
    """Answers Klaviyo's write endpoints as a success would, and records them.

    Profile imports get a stable id per email address (so add-to-list calls
    carry a realistic id); the last ``keep`` requests are kept in memory.
    """

    def __init__(self, keep: int = 200) -> None:
        self.received: deque[dict[str, Any]] = deque(maxlen=keep)
        self._profile_ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        path = request.path_info
        if request.method == "GET" and path == "/_state":
            with self._lock:
                state = {"received": list(self.received)}
            return Response(json=state)(environ, start_response)
        if request.method != "POST" or not path.startswith("/api/"):
            return Response(status=404)(environ, start_response)
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            return Response(status=400)(environ, start_response)
        with self._lock:
            self.received.append({"path": path, "body": body})
            response = self._answer(path, body)
        return response(environ, start_response)

    def _answer(self, path: str, body: Any) -> Response:
        if path == "/api/profile-import":
            email = str(body.get("data", {}).get("attributes", {}).get("email", ""))
            profile_id = self._profile_ids.setdefault(email, uuid.uuid4().hex[:26].upper())
            response = Response(
                status=201,
                json={"data": {"type": "profile", "id": profile_id, "attributes": {}}},
            )
            response.content_type = "application/vnd.api+json"
            return response
        if path.endswith("/relationships/profiles"):
            return Response(status=204)
        return Response(status=202)


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
  <label>Email <input type="email" name="email" required></label>
  <label>First name <input name="first_name"></label>
  <button>Subscribe</button>
</form>

<form id="contact" method="post" action="/klaviyo-connect/api/track">
  <h2>Contact us</h2>
  <input type="hidden" name="event[name]" value="Contact form">
  <input type="hidden" name="confirmOptIn" value="0">
  <input type="hidden" name="redirect" value="/thanks">
  <label>Email <input type="email" name="email" required></label>
  <label>Message <textarea name="event[extra][message]"></textarea></label>
  <button>Send</button>
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
<p><a href="/sent">What was sent to Klaviyo</a></p>
</body></html>
"""


class DemoSite:
    """The inner application: pages the middleware never needs to see."""

    def __init__(self, recorder: RecordingKlaviyo | None, list_id: str) -> None:
        self.recorder = recorder
        self.list_id = list_id

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/":
            note = (
                "No KLAVIYO_PRIVATE_API_KEY is set: submissions go to a recording stand-in "
                f"for Klaviyo at {FAKE_PREFIX}/ (see “What was sent”)."
                if self.recorder is not None
                else "Submissions go to your Klaviyo account."
            )
            body = PAGE.format(note=escape(note), list_id=escape(self.list_id))
            response = Response(body, content_type="text/html", charset="utf-8")
        elif path == "/thanks":
            response = Response(
                '<!doctype html><title>Thanks</title><h1>Thank you!</h1><a href="/">Back</a>',
                content_type="text/html",
                charset="utf-8",
            )
        elif path == "/sent" and self.recorder is not None:
            sent = json.dumps(list(self.recorder.received), indent=2)
            response = Response(
                f"<!doctype html><title>Sent</title><h1>Sent to Klaviyo</h1>"
                f"<pre>{escape(sent)}</pre>",
                content_type="text/html",
                charset="utf-8",
            )
        else:
            response = Response("Not found", status=404, content_type="text/plain")
        return response(environ, start_response)


def build_demo(base_url: str, environ: dict[str, str] | None = None) -> WSGIApplication:
    """The whole demo as one WSGI app; ``base_url`` is where it is served."""
    env = os.environ if environ is None else environ
    list_id = env.get(ENV_LIST_ID, "Y6nRLr")
    recorder = None if env.get(ENV_API_KEY) else RecordingKlaviyo()
    site = DemoSite(recorder, list_id)
    options: dict[str, Any] = {"custom_source": "klaviyo_middleware demo"}
    if recorder is not None:
        options.update(api_key=DEMO_KEY, api_url=base_url + FAKE_PREFIX)
    wrapped = KlaviyoMiddleware(site, **options)

    def demo(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if recorder is not None and path.startswith(FAKE_PREFIX + "/"):
            environ["PATH_INFO"] = path[len(FAKE_PREFIX) :]
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + FAKE_PREFIX
            return recorder(environ, start_response)
        return wrapped(environ, start_response)

    demo.middleware = wrapped  # type: ignore[attr-defined]
    return demo


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # With sync delivery the middleware calls the stand-in Klaviyo in this
    # same server while a request is open, so requests need their own threads.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(host: str, port: int) -> None:
    app = build_demo(f"http://{host}:{port}")
    with make_server(host, port, app, _ThreadingServer, _QuietHandler) as server:
        print(f"klaviyo_middleware demo on http://{host}:{port}/  (Ctrl+C stops it)")
        if not os.environ.get(ENV_API_KEY):
            print(f"No {ENV_API_KEY}: delivering to the stand-in at {FAKE_PREFIX}/.")
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
