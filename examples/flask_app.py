"""A Flask site whose newsletter form goes to Klaviyo.

Run it with ``KLAVIYO_PRIVATE_API_KEY=pk_... flask --app examples.flask_app run``.
"""

from __future__ import annotations

from flask import Flask, request

from klaviyo_middleware import KlaviyoMiddleware

app = Flask(__name__)

SIGNUP_FORM = """<!doctype html>
<title>Newsletter</title>
<h1>Join the newsletter</h1>
<form method="post" action="/klaviyoConnect/api/updateProfile">
  <input type="hidden" name="list" value="{list_id}">
  <input type="hidden" name="redirect" value="/thanks">
  <input type="hidden" name="event[name]" value="Newsletter signup">
  <label>Email <input type="email" name="email" required></label>
  <label>First name <input name="first_name"></label>
  <button>Sign up</button>
</form>
"""


@app.get("/")
def signup() -> str:
    return SIGNUP_FORM.format(list_id=app.config.get("KLAVIYO_LIST_ID", "Y6nRLr"))


@app.get("/thanks")
def thanks() -> str:
    return "<!doctype html><title>Thanks</title><h1>Thanks for signing up!</h1>"


@app.post("/contact")
def contact() -> tuple[str, int]:
    # Reached through ``forward=/contact``: the middleware has already sent
    # the person to Klaviyo and tells us how it went.
    errors = request.environ.get("klaviyo.errors")
    if errors:
        return f"Please check: {', '.join(sorted(errors))}", 400
    return f"Message received from {request.form['email']}", 200


# The one line: every other request reaches Flask untouched.
app.wsgi_app = KlaviyoMiddleware(app.wsgi_app)  # type: ignore[method-assign]
