"""Submit latency seen by the visitor: spool vs sync vs a naive inline implementation.

    python benchmarks/submit_latency.py [--latencies 0.1 0.3] [--requests 300]
        [--plot docs/latency.png]

The fake Klaviyo answers after each latency. "naive inline" is the PHP
plugin's approach: the request handler itself makes the Klaviyo calls one
after another (profile, subscribe, event). Prints p50/p95/p99 in
milliseconds and the ratios to naive inline; optionally plots the
distributions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from webob import Request, Response

from klaviyo_middleware import KlaviyoMiddleware

from _support import API_KEY, call, form_environ, percentiles, site, slow_klaviyo

HEADERS = {"Authorization": f"Klaviyo-API-Key {API_KEY}", "revision": "2026-07-15",
           "Content-Type": "application/vnd.api+json", "Accept": "application/vnd.api+json"}



def naive_inline(url: str) -> Any:
    """Three sequential Klaviyo calls inside the request, as the PHP plugin did."""
    session = requests.Session()
    session.headers.update(HEADERS)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        form = Request(environ).POST
        email = form["email"]
        profile = {"data": {"type": "profile", "attributes": {"email": email}}}
        session.post(f"{url}/api/profile-import", json=profile, timeout=10)
        session.post(f"{url}/api/profile-subscription-bulk-create-jobs", timeout=10, json={
            "data": {"type": "profile-subscription-bulk-create-job", "attributes": {
                "profiles": {"data": [{"type": "profile", "attributes": {
                    "email": email,
                    "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}}]}},
                "relationships": {"list": {"data": {"type": "list", "id": form["list"]}}}}})
        event = {"properties": {}, "profile": profile, "metric": {"data": {
            "type": "metric", "attributes": {"name": form["event[name]"]}}}}
        session.post(f"{url}/api/events", timeout=10,
                     json={"data": {"type": "event", "attributes": event}})
        return Response(json={"success": True})(environ, start_response)

    return app


def measure(app: Any, requests_count: int) -> list[float]:
    samples = []
    for number in range(requests_count):
        environ = form_environ(number)
        started = time.perf_counter()
        call(app, environ)
        samples.append(time.perf_counter() - started)
    return samples


def run(latency: float, requests_count: int, directory: str) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    slow = max(20, requests_count // 10)  # the slow variants need fewer samples
    with slow_klaviyo(latency) as (url, _), tempfile.TemporaryDirectory(dir=directory) as tmp:
        samples["naive inline"] = measure(naive_inline(url), slow)
        sync = KlaviyoMiddleware(site, api_key=API_KEY, api_url=url, delivery="sync")
        samples["sync"] = measure(sync, slow)
        for durability in ("full", "normal"):
            middleware = KlaviyoMiddleware(
                site, api_key=API_KEY, api_url=url, delivery="spool",
                spool_path=str(Path(tmp) / f"{durability}.sqlite3"),
                spool_durability=durability)
            samples[f"spool ({durability})"] = measure(middleware, requests_count)
            middleware.flush(300)
            middleware.close()
    return samples


def plot(results: dict[float, dict[str, list[float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), sharey=True)
    axes = axes if len(results) > 1 else [axes]
    for axis, (latency, samples) in zip(axes, results.items(), strict=True):
        names = list(samples)
        axis.boxplot([[value * 1000 for value in samples[name]] for name in names],
                     whis=(1, 99), showfliers=False)
        axis.set_xticks(range(1, len(names) + 1), names, rotation=15)
        axis.set_yscale("log")
        axis.set_title(f"Klaviyo answering in {latency * 1000:.0f} ms")
        axis.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("latency per submission, ms (whiskers p1-p99)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--dir", default=".", help="where the spool files go (a real disk)")
    parser.add_argument("--plot", help="write a PNG of the distributions here")
    args = parser.parse_args()
    results = {}
    for latency in args.latencies:
        samples = run(latency, args.requests, args.dir)
        results[latency] = samples
        print(f"Klaviyo answering in {latency * 1000:.0f} ms: latency per submission (ms)")
        naive = percentiles(samples["naive inline"])
        for name, values in samples.items():
            stats = percentiles(values)
            ratio = stats["p99"] / naive["p99"]
            print(f"  {name:>14}: " + "  ".join(f"{k} {v * 1000:8.2f}" for k, v in stats.items())
                  + f"   p99 / naive p99 {ratio:.4f}")
    if args.plot:
        plot(results, args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
