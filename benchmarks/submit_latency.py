"""Submit latency seen by the visitor: spool vs sync, Klaviyo answering slowly.

    python benchmarks/submit_latency.py [--latency 0.2] [--requests 200]

Prints p50/p95/p99 in milliseconds for each delivery and the ratio spool/sync.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from klaviyo_middleware import KlaviyoMiddleware

from _support import API_KEY, call, form_environ, percentiles, slow_klaviyo


def inner(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def measure(middleware: KlaviyoMiddleware, requests: int) -> list[float]:
    samples = []
    for number in range(requests):
        environ = form_environ(number)
        started = time.perf_counter()
        call(middleware, environ)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--dir", default=".", help="where the spool files go (a real disk)")
    args = parser.parse_args()
    results = {}
    with slow_klaviyo(args.latency) as (url, _), tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for delivery, durability in (("sync", "full"), ("spool", "full"), ("spool", "normal")):
            middleware = KlaviyoMiddleware(
                inner, api_key=API_KEY, api_url=url, delivery=delivery,
                spool_path=str(Path(tmp) / f"{durability}.sqlite3"),
                spool_durability=durability,
            )
            requests = max(20, args.requests // 10) if delivery == "sync" else args.requests
            results[f"{delivery}/{durability}" if delivery == "spool" else "sync"] = \
                percentiles(measure(middleware, requests))
            middleware.flush(120)
            middleware.close()
    print(f"Klaviyo answering in {args.latency * 1000:.0f} ms; latency per submission (ms)")
    for name, stats in results.items():
        print(f"  {name:>13}: " + "  ".join(f"{k} {v * 1000:8.2f}" for k, v in stats.items()))
    for name in ("spool/full", "spool/normal"):
        ratio = {k: results[name][k] / results["sync"][k] for k in ("p50", "p99")}
        print(f"  {name} / sync: p50 {ratio['p50']:.4f}  p99 {ratio['p99']:.4f}")


if __name__ == "__main__":
    main()
