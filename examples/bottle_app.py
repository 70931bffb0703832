"""A Bottle site wrapped in the middleware."""

from __future__ import annotations

import bottle

from klaviyo_middleware import KlaviyoMiddleware

site = bottle.Bottle()


@site.get("/")
def signup() -> str:
    return """<!doctype html>
<title>Newsletter</title>
<form method="post" action="/klaviyoConnect/api/identify">
  <input type="hidden" name="redirect" value="/thanks">
  <label>Email <input type="email" name="email" required></label>
  <button>Sign up</button>
</form>
"""


@site.get("/thanks")
def thanks() -> str:
    return "<!doctype html><title>Thanks</title><h1>Thanks!</h1>"


# The one line; run with e.g. ``bottle.run(app)`` or any WSGI server.
app = KlaviyoMiddleware(site)
