"""A process using the spool, for the multi-process tests.

    python spool_process.py deliver SPOOL URL          deliver until killed
    python spool_process.py flush SPOOL URL TIMEOUT    deliver, exit 0 once drained
    python spool_process.py submit-exit SPOOL URL      accept one submission and exit
"""

from __future__ import annotations

import sys
import time

from webob import Request

from klaviyo_middleware import KlaviyoMiddleware

from klaviyo_fake import API_KEY


def inner(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"inner"]


def main(mode: str, spool: str, url: str, *rest: str) -> int:
    middleware = KlaviyoMiddleware(inner, api_key=API_KEY, api_url=url, spool_path=spool)
    print("ready", flush=True)
    if mode == "deliver":
        while True:
            time.sleep(1)
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
