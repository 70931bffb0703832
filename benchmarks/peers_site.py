"""The Flask site of benchmarks/peers.py, one of four ways (``PEERS_WAY``).

Each way takes the same newsletter form (email, one list, an event) at the
same path and answers JSON:

- ``inline``: the view calls Klaviyo's official SDK (``klaviyo-api``) itself,
  three calls while the visitor waits;
- ``celery_sdk``: the view queues a Celery task that makes the same three
  SDK calls, retried with Celery's exponential backoff (the common pattern);
- ``spool``: the site wrapped in klaviyo_middleware on its SQLite spool;
- ``celery``: the site wrapped in klaviyo_middleware on Celery.

Served by gunicorn (``peers_site:app``); the SDK task's worker is
``celery -A peers_site:tasks worker``. Settings come from the environment
that benchmarks/peers.py sets.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from flask import Flask, jsonify, request

WAY = os.environ.get("PEERS_WAY", "spool")
API_KEY = os.environ.get("KLAVIYO_PRIVATE_API_KEY", "pk_benchmark_key_0000")
API_URL = os.environ.get("KLAVIYO_API_URL", "http://127.0.0.1:9")
SDK_BROKER = os.environ.get("PEERS_SDK_BROKER", "redis://127.0.0.1:6379/13")
PATH = "/klaviyoConnect/api/updateProfile"

app = Flask(__name__)
tasks = Celery("peers_sdk", broker=SDK_BROKER)
tasks.conf.update(task_acks_late=True, worker_prefetch_multiplier=1,
                  broker_connection_retry_on_startup=True)
_sdk: Any = None


def sdk() -> Any:
    """One SDK client a process; it retries 429 and 5xx on its own."""
    global _sdk
    if _sdk is None:
        from klaviyo_api import KlaviyoAPI
        _sdk = KlaviyoAPI(API_KEY, max_delay=60, max_retries=3, test_host=API_URL)
    return _sdk


def send_with_sdk(email: str, list_id: str, event: str, unique_id: str) -> None:
    """What the SDK's documentation shows: the profile, the subscription, the event."""
    klaviyo = sdk()
    klaviyo.Profiles.create_or_update_profile(
        {"data": {"type": "profile", "attributes": {"email": email}}})
    klaviyo.Profiles.bulk_subscribe_profiles({"data": {
        "type": "profile-subscription-bulk-create-job",
        "attributes": {"profiles": {"data": [{"type": "profile", "attributes": {
            "email": email,
            "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}}]}},
        "relationships": {"list": {"data": {"type": "list", "id": list_id}}}}})
    klaviyo.Events.create_event({"data": {"type": "event", "attributes": {
        "properties": {}, "unique_id": unique_id,
        "metric": {"data": {"type": "metric", "attributes": {"name": event}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": email}}}}}})


@tasks.task(bind=True, autoretry_for=(Exception,), retry_backoff=True, retry_jitter=True,
            max_retries=20)
def send_form(self: Any, email: str, list_id: str, event: str, unique_id: str) -> None:
    send_with_sdk(email, list_id, event, unique_id)


@app.post(PATH)
def signup() -> Any:
    form = request.form
    fields = (form["email"], form["list"], form["event[name]"], form["event[event_id]"])
    if WAY == "inline":
        try:
            send_with_sdk(*fields)
        except Exception as exc:  # the visitor sees Klaviyo's failure
            return jsonify(success=False, error=type(exc).__name__), 502
    else:
        send_form.delay(*fields)
    return jsonify(success=True)


@app.get("/")
def home() -> Any:
    return "ok"


if WAY in ("spool", "celery"):
    from klaviyo_middleware import KlaviyoMiddleware

    settings: dict[str, Any] = {"api_key": API_KEY, "api_url": API_URL}
    if WAY == "spool":
        settings["spool_path"] = os.environ["PEERS_SPOOL"]
    else:
        settings.update(delivery="celery", broker_url=os.environ["PEERS_BROKER"])
    app.wsgi_app = KlaviyoMiddleware(app.wsgi_app, **settings)  # type: ignore[method-assign]
