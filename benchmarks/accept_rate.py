"""Accepted submissions per second in one process, against pass-through.

    python benchmarks/accept_rate.py [--seconds 3]

One thread posts submissions into the middleware as fast as it can (the
worker drains them to a stand-in Klaviyo meanwhile); the same loop through a
bare app gives the baseline. Also reports peak memory with 100,000 queued.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.model.submission import Event, Submission

from _support import API_KEY, call, form_environ, site, slow_klaviyo


def rate(app, seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        call(app, form_environ(count))
        count += 1
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--dir", default=".", help="where the spool files go (a real disk)")
    args = parser.parse_args()
    with slow_klaviyo(0.1) as (url, _), tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bare = rate(site, args.seconds)
        print(f"bare app (same loop, no middleware): {bare:10.0f} requests/s")
        for durability in ("full", "normal"):
            middleware = KlaviyoMiddleware(
                site, api_key=API_KEY, api_url=url,
                spool_path=str(Path(tmp) / f"{durability}.sqlite3"),
                spool_durability=durability,
            )
            accepted = rate(middleware, args.seconds)
            print(f"spool, durability {durability:>6}: {accepted:10.0f} accepted/s "
                  f"(ratio to bare {accepted / bare:.4f})")
            middleware.close()

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        spool = Spool(Path(tmp) / "queued.sqlite3", account_fingerprint(url, API_KEY),
                      durability="normal", max_bytes=10**10)
        started = time.perf_counter()
        for number in range(args.queued):
            spool.enqueue(Submission(action="updateProfile",
                                     profile={"email": f"q{number}@example.com"},
                                     lists=["Y6nRLr"],
                                     event=Event(name="Signed up", unique_id=f"q{number}")))
        # Into the shared file, as this process's sender would move them.
        spool.move_intake()
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        size = (Path(tmp) / "queued.sqlite3").stat().st_size
        print(f"{args.queued} queued in {elapsed:.1f}s: spool file {size / 2**20:.1f} MiB, "
              f"peak RSS grew {(after - before) / 1024:.1f} MiB (to {after / 1024:.1f} MiB)")


if __name__ == "__main__":
    main()
