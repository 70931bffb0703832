"""Klaviyo API calls for a burst on Celery: one task per submission vs the backlog pool.

    python benchmarks/celery_burst.py [--submissions 10000] [--singles 600]

The burst (updateProfile with a list and an event each) is enqueued through
the middleware's web path onto the Redis broker on 127.0.0.1:6379 (database
14, emptied first) while no worker runs; then ``klaviyo-middleware worker``
starts and drains it against a stand-in Klaviyo answering after
``latency`` and enforcing Klaviyo's published rate limits. Timed from the
worker's start until every submission is recorded as delivered. The same is
measured on ``--singles`` submissions with batching off
(``--bulk-threshold 0``), one Klaviyo call per step, for the ratio.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import redis

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.delivery.celery.state import RedisState
from klaviyo_middleware.delivery.identities import account_fingerprint

from _support import API_KEY, call, calls_by_endpoint, form_environ, site, slow_klaviyo

BROKER = "redis://127.0.0.1:6379/14"



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--submissions", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    print(f"Celery, Redis broker, worker --concurrency {args.concurrency}; "
          f"Klaviyo answering after {args.latency * 1000:.0f} ms with its rate limits")
    batched = run(args.submissions, args, ())
    report("backlog pool", args.submissions, *batched)
    if args.singles:
        singles = run(args.singles, args, ("--bulk-threshold", "0"))
        report("one call per step", args.singles, *singles)
        per_single = sum(singles[0].values()) / args.singles
        per_pooled = sum(batched[0].values()) / args.submissions
        print(f"  calls per submission, pool / single: {per_pooled / per_single:.5f}")


def run(count: int, args: argparse.Namespace,
        flags: tuple[str, ...]) -> tuple[Counter[str], float, float]:
    connection = redis.Redis.from_url(BROKER)
    connection.flushdb()
    with slow_klaviyo(args.latency, rate_limits=True) as (url, calls):
        web = KlaviyoMiddleware(site, api_key=API_KEY, api_url=url, delivery="celery",
                                broker_url=BROKER)
        started = time.perf_counter()
        for number in range(count):
            call(web, form_environ(number))
        enqueue = time.perf_counter() - started
        web.close()
        state = RedisState(BROKER, account_fingerprint(url, API_KEY))
        env = dict(os.environ, KLAVIYO_PRIVATE_API_KEY=API_KEY, KLAVIYO_API_URL=url,
                   KLAVIYO_STATE_URL=BROKER)
        worker = subprocess.Popen(  # noqa: S603 - our own worker command
            [sys.executable, "-m", "klaviyo_middleware.cli", "worker", "--broker", BROKER,
             "--concurrency", str(args.concurrency), "--loglevel", "ERROR", *flags],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.perf_counter()
        try:
            while state.stats()["delivered"] + state.stats()["dead"] < count:
                if time.perf_counter() - started > 1800:
                    raise SystemExit("not drained in 30 minutes")
                time.sleep(0.1)
            elapsed = time.perf_counter() - started
        finally:
            worker.send_signal(signal.SIGTERM)  # a warm shutdown
            worker.wait(60)
        counted = Counter(calls)
    connection.flushdb()
    return counted, enqueue, elapsed


def report(label: str, count: int, calls: Counter[str], enqueue: float, elapsed: float) -> None:
    throttled = calls.pop("429", 0)
    by_path = calls_by_endpoint(calls)
    print(f"  {label:18s} {count:6d} submissions: enqueued in {enqueue:.1f} s "
          f"({count / enqueue:.0f}/s); drained in {elapsed:.1f} s; "
          f"{sum(calls.values())} calls ({by_path}); 429s received: {throttled}")


if __name__ == "__main__":
    main()
