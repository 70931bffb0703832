"""The spool under several processes: submit latency and accepted/s, 1 to 8 processes.

    python benchmarks/multiprocess.py [--seconds 4] [--processes 1,2,4,8] [--dir .]

Each process is a site's worker (as gunicorn's would be): a KlaviyoMiddleware
on one shared spool file, posting updateProfile submissions into itself —
either at a light total rate split between the processes, or as fast as it
can — while its own sender threads deliver to a stand-in Klaviyo answering
in 100 ms. Printed per durability: accepted submissions per second (all
processes together) and the submit latency a visitor waits (p50, p99), and
the ratios issue 15's targets are stated in (against one process, same run).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import API_KEY, call, form_environ, site, slow_klaviyo

LIGHT_TOTAL = 40.0  # submissions per second, all processes together


def _post(url: str, spool: str, durability: str, rate: float | None, seconds: float,
          start_at: float, offset: int, results: Any) -> None:
    from klaviyo_middleware import KlaviyoMiddleware

    middleware = KlaviyoMiddleware(site, api_key=API_KEY, api_url=url, spool_path=spool,
                                   spool_durability=durability)
    call(middleware, form_environ(offset))  # warm up: connections, threads
    while time.time() < start_at:
        time.sleep(0.001)
    latencies = []
    deadline = start_at + seconds
    number = offset + 1
    next_at = time.perf_counter()
    while time.time() < deadline:
        if rate is not None:
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            next_at += 1 / rate
        began = time.perf_counter()
        call(middleware, form_environ(number))
        latencies.append(time.perf_counter() - began)
        number += 1
    results.put(latencies)
    # Leave delivery to the next cell's processes: what is queued stays queued.
    middleware.close()


def run(url: str, directory: str, processes: int, durability: str, light: bool,
        seconds: float) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    spool = str(Path(directory) / f"{durability}-{processes}-{light}.sqlite3")
    rate = LIGHT_TOTAL / processes if light else None
    start_at = time.time() + 2.0 + 0.3 * processes
    workers = [context.Process(target=_post, args=(url, spool, durability, rate, seconds,
                                                   start_at, index * 10_000_000, results))
               for index in range(processes)]
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    for _ in workers:
        latencies.extend(results.get())
    for worker in workers:
        worker.join()
    ordered = sorted(latencies)
    return {
        "accepted": len(latencies) / seconds,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--dir", default=".", help="where the spool files go (a real disk)")
    args = parser.parse_args()
    counts = [int(count) for count in args.processes.split(",")]
    with slow_klaviyo(0.1) as (url, _), tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for durability in ("full", "normal"):
            print(f"durability {durability}")
            print(f"  {'processes':>9}  {'load':<22} {'accepted/s':>10} {'p50 ms':>8} "
                  f"{'p99 ms':>8}")
            table: dict[tuple[int, bool], dict[str, float]] = {}
            for light in (True, False):
                for count in counts:
                    row = run(url, tmp, count, durability, light, args.seconds)
                    table[(count, light)] = row
                    load = (f"{LIGHT_TOTAL / count:g}/s each ({LIGHT_TOTAL:g}/s)" if light
                            else "as fast as possible")
                    print(f"  {count:>9}  {load:<22} {row['accepted']:>10.0f} "
                          f"{row['p50']:>8.2f} {row['p99']:>8.2f}", flush=True)
            most, one = max(counts), min(counts)
            print(f"  light load, p99 of {most} processes / p99 of {one}: "
                  f"{table[(most, True)]['p99'] / table[(one, True)]['p99']:.2f} (target <= 2)")
            print(f"  saturated, accepted/s of {most} processes / of {one}: "
                  f"{table[(most, False)]['accepted'] / table[(one, False)]['accepted']:.2f} "
                  f"(target >= 1.5)")
            print(f"  saturated, p99 of {most} processes / p99 of {one}: "
                  f"{table[(most, False)]['p99'] / table[(one, False)]['p99']:.2f} "
                  f"(target <= 10)")


if __name__ == "__main__":
    main()
