"""``klaviyo-middleware check``: is this set-up going to work? (docs/index.md)

One line a check, before a visitor finds out: the key (its form, then
Klaviyo's answer for each scope delivery needs), each list a form names
(``GET /api/lists/{id}``: does it exist, does it ask for confirmation), the
spool (writable, the disk's free space) and, with Celery, the broker.

The scopes are probed without side effects: each write endpoint is sent a
body with nothing in it. Klaviyo checks the key (401) and its scopes (403)
before it reads a body, so a 400 says "this key may write here", and
nothing is created.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.account import check_api_key
from klaviyo_middleware.klaviyo.client import KlaviyoClient

# What delivery writes, and a side-effect-free request that proves the scope.
_SCOPES: tuple[tuple[str, str], ...] = (
    ("profiles:write", "/api/profile-import"),
    ("events:write", "/api/events"),
    ("subscriptions:write", "/api/profile-subscription-bulk-create-jobs"),
)
# The spool needs room for a backlog; less than this free is worth a word.
LOW_DISK = 64 * 1024 * 1024


@dataclass
class Finding:
    ok: bool
    what: str
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what}: {self.detail}"


def run(out: TextIO, *, api_key: str | None, api_url: str, revision: str,
        lists: Iterable[str], spool_path: str | None, broker_url: str | None) -> bool:
    """Print one line a check; whether every check passed."""
    passed = True
    for outcome in _all(api_key, api_url, revision, list(lists), spool_path, broker_url):
        print(outcome.line(), file=out, flush=True)
        passed = passed and outcome.ok
    return passed


def _all(api_key: str | None, api_url: str, revision: str, lists: list[str],
         spool_path: str | None, broker_url: str | None) -> Iterable[Finding]:
    try:
        key = check_api_key("api_key", api_key)
    except ConfigurationError as exc:
        yield Finding(False, "key", str(exc))
    else:
        client = KlaviyoClient(key, api_url=api_url, revision=revision, timeout=(5.0, 15.0))
        try:
            yield from _key_and_lists(client, lists)
        finally:
            client.close()
    if spool_path is not None:
        yield _spool(Path(spool_path))
    if broker_url:
        yield _broker(broker_url)


def _key_and_lists(client: KlaviyoClient, lists: list[str]) -> Iterable[Finding]:
    refused = False
    for scope, path in _SCOPES:
        outcome = _probe(client, scope, "POST", path, {"data": {}})
        refused = refused or "401" in outcome.detail
        yield outcome
        if refused:
            return  # every other call would say the same
    # Membership without consent (subscribe=0): an empty add changes nothing.
    target = lists[0] if lists else "check"
    yield _probe(client, "lists:write", "POST", f"/api/lists/{target}/relationships/profiles",
                 {"data": []})
    for list_id in lists:
        yield _list(client, list_id)


def _probe(client: KlaviyoClient, scope: str, method: str, path: str,
           body: dict[str, object]) -> Finding:
    status, _ = client.probe(method, path, body)
    what = f"key may {scope}"
    if status == 401:
        return Finding(False, what, "Klaviyo refused the key (401): copy the private key "
                                    "again from Klaviyo, Settings > API keys")
    if status == 403:
        return Finding(False, what, f"the key lacks the {scope} scope (403): give it that "
                                    "scope in Klaviyo, Settings > API keys")
    if status is None or status >= 500 or status == 429:
        return Finding(False, what, f"Klaviyo did not answer ({status or 'unreachable'}) at "
                                    f"{client.api_url}: try again, or check api_url")
    return Finding(True, what, f"{method} {path} answered {status}")


def _list(client: KlaviyoClient, list_id: str) -> Finding:
    status, answer = client.probe("GET", f"/api/lists/{list_id}")
    what = f"list {list_id}"
    if status == 404:
        return Finding(False, what, "no such list in this account: check the id (Klaviyo, "
                                    "Lists & segments > the list > Settings)")
    if status == 403:
        return Finding(False, what, "the key lacks lists:read, needed to check a list")
    if status != 200 or not isinstance(answer, dict):
        return Finding(False, what, f"Klaviyo answered {status or 'nothing'}")
    attributes = (answer.get("data") or {}).get("attributes") or {}
    opt_in = attributes.get("opt_in_process")
    confirm = ("a confirmation email first (double opt-in)" if opt_in == "double_opt_in"
               else "no confirmation (single opt-in)" if opt_in == "single_opt_in"
               else f"opt-in {opt_in!r}")
    return Finding(True, what, f"{attributes.get('name', '?')!r}; subscribers get {confirm}")


def _spool(path: Path) -> Finding:
    what = f"spool {path}"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return Finding(False, what, f"{folder if not path.exists() else path} is not writable "
                                    "by this user: set spool_path (KLAVIYO_SPOOL_PATH)")
    free = shutil.disk_usage(folder).free
    if free < LOW_DISK:
        return Finding(False, what, f"only {free // (1024 * 1024)} MiB free on its disk: "
                                    "a backlog needs room (docs/delivery.md)")
    return Finding(True, what, f"writable, {free // (1024 * 1024)} MiB free")


def _broker(url: str) -> Finding:
    what = "broker"
    try:
        from celery import Celery
    except ImportError:
        return Finding(False, what, 'needs Celery: pip install "klaviyo_middleware[celery]"')
    try:
        with Celery(broker=url).connection_for_write(connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return Finding(False, what, f"cannot connect ({type(exc).__name__}): check broker_url "
                                    "and that the broker runs")
    return Finding(True, what, "connected")

