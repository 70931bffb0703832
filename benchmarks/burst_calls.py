"""Klaviyo API calls for a burst of submissions: one call per step vs batching.

    python benchmarks/burst_calls.py [--submissions 10000] [--latency 0.05]

The burst (updateProfile with a list and an event each) is put in a spool
and drained by the middleware's worker with batching, against a stand-in
Klaviyo answering after ``latency`` and enforcing Klaviyo's published rate
limits; one call per step is counted from the
same submissions' delivery plan (three calls each), since draining it for
real takes minutes under Klaviyo's rate limits.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.klaviyo import steps
from klaviyo_middleware.klaviyo.limits import ENDPOINT_LIMITS, endpoint_for
from klaviyo_middleware.model.submission import Event, Submission

from _support import API_KEY, calls_by_endpoint, site, slow_klaviyo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--submissions", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--dir", default=".")
    parser.add_argument("--singles", type=int, default=600,
                        help="also drain this many with one call per step, for real")
    args = parser.parse_args()
    burst = [
        Submission(action="updateProfile", profile={"email": f"b{n}@example.com"},
                   lists=["Y6nRLr"], event=Event(name="Ordered", unique_id=f"order-{n}"))
        for n in range(args.submissions)
    ]
    single_calls: dict[str, int] = {}
    for item in burst:
        for step in steps.plan(item):
            single_calls[endpoint_for(step)] = single_calls.get(endpoint_for(step), 0) + 1
    # At Klaviyo's steady limits, each endpoint needs calls / per-minute-limit minutes.
    single_minutes = max(calls / ENDPOINT_LIMITS[name][1][1]
                         for name, calls in single_calls.items())

    calls, drained, elapsed = drain(burst, args, batching=True)
    throttled = calls.pop("429", 0)
    batched = sum(calls.values())
    by_endpoint = calls_by_endpoint(calls)
    print(f"{args.submissions} submissions (profile + list + event each)")
    print(f"  one call per step: {sum(single_calls.values()):6d} calls "
          f"({', '.join(f'{k} {v}' for k, v in single_calls.items())}); "
          f"at Klaviyo's steady limits >= {single_minutes:.1f} min")
    print(f"  batching:          {batched:6d} calls "
          f"({by_endpoint}); "
          f"drained={drained} in {elapsed:.1f} s; 429s received: {throttled}")
    print(f"  calls ratio batching / single: {batched / sum(single_calls.values()):.5f}")
    if args.singles:
        subset = burst[: args.singles]
        calls, drained, elapsed = drain(subset, args, batching=False)
        throttled = calls.pop("429", 0)
        print(f"  one call per step, measured on {len(subset)}: {sum(calls.values())} calls, "
              f"drained={drained} in {elapsed:.1f} s; 429s received: {throttled}")
        calls, drained, elapsed = drain(subset, args, batching=True)
        throttled = calls.pop("429", 0)
        print(f"  batching, measured on {len(subset)}: {sum(calls.values())} calls, "
              f"drained={drained} in {elapsed:.1f} s; 429s received: {throttled}")


def drain(burst: list[Submission], args: argparse.Namespace,
          batching: bool) -> tuple[Counter[str], bool, float]:
    with slow_klaviyo(args.latency, rate_limits=True) as (url, calls), \
            tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "burst.sqlite3"
        spool = Spool(path, account_fingerprint(url, API_KEY), durability="normal",
                      max_bytes=10**10)
        for item in burst:
            spool.enqueue(item)
        # All queued at once in the shared file: the backlog a burst leaves.
        spool.close_all()
        started = time.perf_counter()
        middleware = KlaviyoMiddleware(site, api_key=API_KEY, api_url=url,
                                       spool_path=str(path), sender_threads=4)
        if not batching:
            middleware.delivery.sender.options = replace(  # type: ignore[attr-defined]
                middleware.delivery.sender.options, batching=False)  # type: ignore[attr-defined]
        drained = middleware.flush(900)
        elapsed = time.perf_counter() - started
        middleware.close()
    return calls, drained, elapsed


if __name__ == "__main__":
    main()
