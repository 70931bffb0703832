"""A process using the spool, for the multi-process tests.

    python spool_process.py deliver SPOOL URL          deliver until killed
    python spool_process.py flush SPOOL URL TIMEOUT    deliver, exit 0 once drained
    python spool_process.py submit-exit SPOOL URL      accept one submission and exit
    python spool_process.py post SPOOL URL NAME        post through the middleware (and
                                                       deliver) until killed, printing
                                                       each accepted submission's event id
    python spool_process.py accept SPOOL URL NAME      accept into the spool only (no
                                                       sender) until killed, printing ids
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from webob import Request

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.model.submission import Event, Submission

from support.klaviyo_fake import API_KEY


def start(mode: str, spool: Path, url: str, *args: str) -> subprocess.Popen[str]:
    """Run this script as another process (for the tests); returns once it is ready."""
    here = Path(__file__)
    env = dict(os.environ, PYTHONPATH=str(here.parent))
    process = subprocess.Popen([sys.executable, str(here), mode, str(spool), url, *args],
                               stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def inner(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"inner"]


def post_forever(middleware: KlaviyoMiddleware, name: str) -> None:
    number = 0
    while True:
        unique = f"{name}-{number}"
        request = Request.blank(
            "/klaviyoConnect/api/updateProfile", method="POST",
            POST={"email": f"{unique}@example.com", "list": "L1", "event[name]": "Joined",
                  "event[unique_id]": unique},
            headers={"Accept": "application/json"},
        )
        if request.get_response(middleware).json.get("queued"):
            print(unique, flush=True)  # accepted: the visitor was told so
        number += 1
        time.sleep(0.002)


def accept_forever(spool: Spool, name: str) -> None:
    number = 0
    while True:
        unique = f"{name}-{number}"
        spool.enqueue(Submission(action="updateProfile",
                                 profile={"email": f"{unique}@example.com"}, lists=["L1"],
                                 event=Event(name="Joined", unique_id=unique)))
        print(unique, flush=True)
        number += 1


def main(mode: str, spool: str, url: str, *rest: str) -> int:
    if mode == "accept":
        store = Spool(spool, account_fingerprint(url, API_KEY))
        print("ready", flush=True)
        accept_forever(store, rest[0])
    middleware = KlaviyoMiddleware(inner, api_key=API_KEY, api_url=url, spool_path=spool)
    print("ready", flush=True)
    if mode == "deliver":
        while True:
            time.sleep(1)
    if mode == "post":
        post_forever(middleware, rest[0])
    if mode == "flush":
        return 0 if middleware.flush(float(rest[0])) else 1
    if mode == "submit-exit":
        request = Request.blank(
            "/klaviyoConnect/api/updateProfile", method="POST",
            POST={"email": "leaving@example.com", "event[name]": "Left"},
            headers={"Accept": "application/json"},
        )
        response = request.get_response(middleware)
        print(response.json["submission_id"], flush=True)
        return 0 if response.json["queued"] else 1
    return 2


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
