"""The spool under several processes: submit latency and accepted/s, 1 to 8 processes.

    python benchmarks/multiprocess.py [--seconds 4] [--processes 1,2,4,8] [--dir .]
                                      [--plot docs/multiprocess.png] [--no-server]

Each process is a site's worker (as gunicorn's would be): a KlaviyoMiddleware
on one shared spool file, posting updateProfile submissions into itself —
either at a light total rate split between the processes, or as fast as it
can — while its own sender threads deliver to a stand-in Klaviyo answering
in 100 ms. Printed per durability: accepted submissions per second (all
processes together) and the submit latency a visitor waits (p50, p99), and
the ratios issue 15's targets are stated in (against one process, same run).

Then the same through a real server: gunicorn with 8 sync workers and with
4 workers x 4 threads (gthread), loaded by wrk posting forms over 16
connections, the middleware's requests/s and p99 beside the bare site's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import (
    API_KEY,
    call,
    form_environ,
    free_port,
    paced,
    site,
    slow_klaviyo,
    wait_for_port,
)

LIGHT_TOTAL = 40.0  # submissions per second, all processes together
# A p99 needs samples: light load runs this many times longer.
LIGHT_LONGER = 3
HERE = Path(__file__).resolve().parent
SERVERS = {"8 sync": ["--workers", "8"],
           "4x4 gthread": ["--workers", "4", "--threads", "4", "--worker-class", "gthread"]}
# wrk posts a form with a new address on every request.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Accept"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  local body = "email=w" .. counter .. "-" .. math.random(1, 1000000000) ..
    "%40example.com&first_name=W&list=Y6nRLr&event%5Bname%5D=Signed+up"
  return wrk.format(nil, "/klaviyoConnect/api/updateProfile", nil, body)
end
"""


def _post(url: str, spool: str, durability: str, rate: float | None, seconds: float,
          start_at: float, offset: int, results: Any) -> None:
    from klaviyo_middleware import KlaviyoMiddleware

    middleware = KlaviyoMiddleware(site, api_key=API_KEY, api_url=url, spool_path=spool,
                                   spool_durability=durability)
    call(middleware, form_environ(offset))  # warm up: connections, threads
    latencies = []
    for number in paced(start_at, seconds, rate, offset + 1):
        began = time.perf_counter()
        call(middleware, form_environ(number))
        latencies.append(time.perf_counter() - began)
    results.put(latencies)
    # Leave delivery to the next cell's processes: what is queued stays queued.
    middleware.close()


def run(url: str, directory: str, processes: int, durability: str, light: bool,
        seconds: float) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    spool = str(Path(directory) / f"{durability}-{processes}-{light}.sqlite3")
    rate = LIGHT_TOTAL / processes if light else None
    seconds = seconds * LIGHT_LONGER if light else seconds
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


def served(url: str, directory: str, server: str, variant: str,
           seconds: float) -> dict[str, float] | None:
    """Requests/s and p99 ms of gunicorn (``server``) serving ``variant``
    under wrk; ``None`` when gunicorn or wrk is missing."""
    gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable))
    wrk = shutil.which("wrk")
    if gunicorn is None or wrk is None:
        return None
    port = free_port()
    spool = str(Path(directory) / f"served-{server.replace(' ', '')}-{variant}.sqlite3")
    env = dict(os.environ, BENCH_VARIANT=variant, BENCH_SPOOL=spool, BENCH_KLAVIYO=url,
               PYTHONPATH=str(HERE))
    process = subprocess.Popen(  # noqa: S603 - our own loopback server
        [gunicorn, "--bind", f"127.0.0.1:{port}", *SERVERS[server], "--log-level", "warning",
         "served:app"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    script = Path(directory) / "post.lua"
    script.write_text(WRK_SCRIPT)
    try:
        wait_for_port(port)
        time.sleep(1.0)  # every worker up and warm
        result = subprocess.run(  # noqa: S603 - wrk against our own loopback server
            [wrk, "-t", "2", "-c", "16", "-d", f"{max(1, int(seconds))}s", "--latency",
             "-s", str(script), f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True)
    finally:
        process.terminate()
        process.wait(30)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", result.stdout)
    if rate is None or p99 is None:
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return {"accepted": float(rate.group(1)), "p99": float(p99.group(1)) * scale}


def plot(tables: dict[str, dict[tuple[int, bool], dict[str, float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rates, tails) = plt.subplots(1, 2, figsize=(11, 4.2))
    for durability, table in tables.items():
        counts = sorted({count for count, _ in table})
        rates.plot(counts, [table[(count, False)]["accepted"] for count in counts],
                   marker="o", label=f"{durability}, as fast as possible")
        for light, style in ((True, "--"), (False, "-")):
            tails.plot(counts, [table[(count, light)]["p99"] for count in counts],
                       linestyle=style, marker="o",
                       label=f"{durability}, {'light (40/s)' if light else 'saturated'}")
    rates.set(title="Accepted submissions per second, all processes",
              xlabel="processes on one spool", ylabel="submissions/s", ylim=(0, None))
    tails.set(title="Submit p99", xlabel="processes on one spool", ylabel="ms",
              yscale="log")
    for axis in (rates, tails):
        axis.set_xticks(sorted({count for table in tables.values() for count, _ in table}))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--processes", default="1,2,4,8")
    parser.add_argument("--dir", default=".", help="where the spool files go (a real disk)")
    parser.add_argument("--plot", help="write a PNG of the table here")
    parser.add_argument("--no-server", action="store_true", help="skip gunicorn + wrk")
    args = parser.parse_args()
    counts = [int(count) for count in args.processes.split(",")]
    tables: dict[str, dict[tuple[int, bool], dict[str, float]]] = {}
    with slow_klaviyo(0.1) as (url, _), tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for durability in ("full", "normal"):
            print(f"durability {durability}")
            print(f"  {'processes':>9}  {'load':<22} {'accepted/s':>10} {'p50 ms':>8} "
                  f"{'p99 ms':>8}")
            table: dict[tuple[int, bool], dict[str, float]] = {}
            tables[durability] = table
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
        if args.plot:
            plot(tables, args.plot)
        if args.no_server:
            return
        print("gunicorn + wrk (16 connections posting forms), requests/s and p99, "
              "ratio to the bare site:")
        for server in SERVERS:
            bare = served(url, tmp, server, "bare", args.seconds)
            if bare is None:
                print("  (gunicorn or wrk not installed: skipped)")
                return
            print(f"  {server:<12} {'bare site':<14} {bare['accepted']:>8.0f}/s "
                  f"p99 {bare['p99']:>7.2f} ms")
            for variant in ("spool-full", "spool-normal"):
                row = served(url, tmp, server, variant, args.seconds)
                if row is None:
                    continue
                print(f"  {server:<12} {variant:<14} {row['accepted']:>8.0f}/s "
                      f"p99 {row['p99']:>7.2f} ms  ({row['accepted'] / bare['accepted']:.2f} "
                      f"of bare)", flush=True)


if __name__ == "__main__":
    main()
