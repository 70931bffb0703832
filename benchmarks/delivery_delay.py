"""Time from a visitor's submission to Klaviyo having its event, at light load.

    python benchmarks/delivery_delay.py [--seconds 15] [--latency 0.05]

One process, then eight on one spool, post 8 updateProfile submissions a
second in all (profile, list, event: three calls one after another when a
submission is alone, or its share of a round's bulk calls); the stand-in
Klaviyo answers each call after ``latency`` and notes when each event
arrives, alone or in a bulk job. Printed: the delay's p50 and p99, as a
ratio to three calls' latency, and eight processes against one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from klaviyo_middleware.testing import FakeKlaviyo, Faults
from klaviyo_middleware.testing.server import BackgroundServer

from _support import API_KEY, call, form_environ, paced, site

TOTAL_RATE = 8.0  # well within what one process delivers: no backlog


def _post(url: str, spool: str, rate: float, seconds: float, start_at: float, offset: int,
          results: Any) -> None:
    from klaviyo_middleware import KlaviyoMiddleware

    middleware = KlaviyoMiddleware(site, api_key=API_KEY, api_url=url, spool_path=spool)
    sent: dict[str, float] = {}
    for number in paced(start_at, seconds, rate, offset):
        sent[f"person{number}@example.com"] = time.time()
        call(middleware, form_environ(number))
    middleware.flush(30)
    results.put(sent)
    middleware.close()


def measure(url: str, arrived: dict[str, float], directory: str, processes: int,
            seconds: float) -> list[float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    spool = str(Path(directory) / f"delay-{processes}.sqlite3")
    start_at = time.time() + 2.0 + 0.3 * processes
    workers = [context.Process(target=_post, args=(url, spool, TOTAL_RATE / processes, seconds,
                                                   start_at, index * 10_000_000 + 1, results))
               for index in range(processes)]
    for worker in workers:
        worker.start()
    sent: dict[str, float] = {}
    for _ in workers:
        sent.update(results.get())
    for worker in workers:
        worker.join()
    return sorted(arrived[email] - at for email, at in sent.items() if email in arrived)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    fake = FakeKlaviyo(rate_limits=False, faults=Faults(latency=args.latency))
    arrived: dict[str, float] = {}

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"].rstrip("/")
        if path.endswith(("/api/events", "/api/event-bulk-create-jobs")):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            response = fake(dict(environ, **{"wsgi.input": _Replay(body)}), start_response)
            for email in _emails(json.loads(body)["data"]):
                arrived.setdefault(email, time.time())
            return response
        return fake(environ, start_response)

    least = 3 * args.latency
    rows = {}
    with BackgroundServer(app) as server, tempfile.TemporaryDirectory(dir=".") as tmp:
        for processes in (1, 8):
            delays = measure(server.url, arrived, tmp, processes, args.seconds)
            rows[processes] = (statistics.median(delays),
                               delays[min(len(delays) - 1, int(0.99 * len(delays)))])
            p50, p99 = rows[processes]
            print(f"{processes} process(es), {TOTAL_RATE:g}/s in all, {len(delays)} events: "
                  f"submission to Klaviyo p50 {p50 * 1000:.0f} ms ({p50 / least:.2f} of three "
                  f"calls), p99 {p99 * 1000:.0f} ms ({p99 / least:.2f})", flush=True)
    print(f"8 processes / 1: p50 {rows[8][0] / rows[1][0]:.2f}, p99 {rows[8][1] / rows[1][1]:.2f}")


def _emails(data: dict[str, Any]) -> list[str]:
    """Whose events a body carries: one event, or a bulk job of them."""
    attributes = data["attributes"]
    if "events-bulk-create" in attributes:
        return [item["attributes"]["profile"]["data"]["attributes"]["email"]
                for item in attributes["events-bulk-create"]["data"]]
    return [attributes["profile"]["data"]["attributes"]["email"]]


class _Replay:
    """A request body already read, for the fake to read again."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def read(self, size: int = -1) -> bytes:
        body, self._body = self._body, b""
        return body


if __name__ == "__main__":
    main()
