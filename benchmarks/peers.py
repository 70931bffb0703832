"""Four ways to send a form to Klaviyo, side by side, against a Klaviyo-like fake.

    python benchmarks/peers.py [--ways inline,celery_sdk,spool,celery]
                               [--scenarios steady,outage,burst] [--scale 1.0]

The same Flask site (benchmarks/peers_site.py) under gunicorn (4 workers, 8
threads each) takes the same newsletter form — email, one list, an event —
four ways: the official ``klaviyo-api`` SDK inline in the view; a Celery
task making the same SDK calls; klaviyo_middleware on its spool; and on
Celery. Both Celery ways get one worker of concurrency 4 on the Redis on
127.0.0.1:6379 (databases 12 and 13, emptied first).

The fake is the shipped one (klaviyo_middleware.testing) as Klaviyo behaves:
300 ms a call, Klaviyo's published per-endpoint rate limits, profile import
jobs processed a second after they arrive. A submission has *reached
Klaviyo* when the fake holds all of it: the profile, the subscription to the
list and the event (watched every 50 ms).

Scenarios (``--scale`` shortens them):

- steady: 20 posts a second for 30 s;
- outage: 10 a second for 120 s, Klaviyo answering 503 from the 30th to the
  90th second;
- burst: 2,000 posts as fast as 32 visitors can post them.

Printed per way: what visitors waited (p50/p99) and how many saw an error;
when their submissions reached Klaviyo after they posted (p50/p99), how many
never did within the wait (``--wait`` seconds after the load), the API calls
made and the 429s Klaviyo answered; for the outage, how long after Klaviyo
answered again the last of the posts accepted while it was down reached it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests

from klaviyo_middleware.testing import FakeKlaviyo, Faults
from klaviyo_middleware.testing.server import BackgroundServer

HERE = Path(__file__).resolve().parent
API_KEY = "pk_benchmark_key_0000"
LIST_ID = "Y6nRLr"
REDIS = "redis://127.0.0.1:6379"
OUR_BROKER = f"{REDIS}/12"
SDK_BROKER = f"{REDIS}/13"
WAYS = {
    "inline": "inline, official SDK",
    "celery_sdk": "Celery task + SDK",
    "spool": "ours, spool",
    "celery": "ours, Celery",
}


@dataclass
class Scenario:
    name: str
    rate: float | None  # posts a second; None: as fast as the visitors go
    seconds: float
    count: int | None = None
    outage: tuple[float, float] | None = None  # (start, length) in seconds


@dataclass
class Result:
    visitor: list[float] = field(default_factory=list)
    errors: int = 0
    posted: dict[str, float] = field(default_factory=dict)
    reached: dict[str, float] = field(default_factory=dict)
    calls: int = 0
    throttled: int = 0
    # Outage: seconds from Klaviyo's return until every post accepted while
    # it was down had reached it.
    back_at: float | None = None


class Watcher:
    """The fake Klaviyo and, for each email, when it first held all of it."""

    def __init__(self, faults: Faults) -> None:
        self.fake = FakeKlaviyo(rate_limits=True, faults=faults, job_seconds=1.0)
        self.calls = 0
        self.reached: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        return self.fake(environ, start_response)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.look()

    def look(self) -> None:
        state = self.fake.state
        state.process_jobs()
        now = time.time()
        with state.lock:
            target = state.lists.get(LIST_ID)
            subscribed = target.subscribers.get("email", set()) if target else set()
            with_event = {event["profile_id"] for event in state.events}
            for (name, value), profile_id in list(state._index.items()):
                if (name == "email" and value not in self.reached
                        and profile_id in subscribed and profile_id in with_event):
                    self.reached[value] = now


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_way(way: str, api_url: str, workdir: str) -> tuple[str, list[subprocess.Popen[bytes]]]:
    port = free_port()
    env = dict(os.environ, PEERS_WAY=way, KLAVIYO_PRIVATE_API_KEY=API_KEY,
               KLAVIYO_API_URL=api_url, PEERS_SDK_BROKER=SDK_BROKER,
               PEERS_BROKER=OUR_BROKER, PEERS_SPOOL=str(Path(workdir) / "spool.sqlite3"),
               KLAVIYO_STATE_URL=OUR_BROKER, PYTHONPATH=str(HERE))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    processes = [subprocess.Popen(  # noqa: S603 - our own benchmark site
        [sys.executable, "-m", "gunicorn", "-w", "4", "-k", "gthread", "--threads", "8",
         "-b", f"127.0.0.1:{port}", "--chdir", str(HERE), "peers_site:app"], **quiet)]
    if way == "celery_sdk":
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "peers_site:tasks", "worker",
             "--concurrency", "4", "--loglevel", "ERROR"], cwd=HERE, **quiet))
    elif way == "celery":
        processes.append(subprocess.Popen(  # noqa: S603 - our own worker command
            [sys.executable, "-m", "klaviyo_middleware.cli", "worker", "--broker", OUR_BROKER,
             "--concurrency", "4", "--loglevel", "ERROR"], **quiet))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            requests.get(url + "/", timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        raise SystemExit(f"{way}: the site did not start")
    time.sleep(2.0 if way.startswith("celery") else 0.5)  # the worker connects
    return url, processes


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def post_load(url: str, scenario: Scenario, result: Result, stamp: str) -> None:
    local = threading.local()
    lock = threading.Lock()

    def post(number: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        email = f"{stamp}-{number}@example.com"
        data = {"email": email, "list": LIST_ID, "event[name]": "Signed up",
                "event[event_id]": f"{stamp}-{number}"}
        started = time.time()
        try:
            answer = session.post(url + "/klaviyoConnect/api/updateProfile", data=data,
                                  headers={"Accept": "application/json"}, timeout=120)
            ok = answer.status_code == 200
        except requests.RequestException:
            ok = False
        waited = time.time() - started
        with lock:
            result.visitor.append(waited)
            if ok:
                result.posted[email] = started
            else:
                result.errors += 1

    workers = 32 if scenario.rate is None else 64
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if scenario.rate is None:
            assert scenario.count is not None
            list(pool.map(post, range(scenario.count)))
            return
        start = time.perf_counter()
        number = 0
        while (at := number / scenario.rate) < scenario.seconds:
            pause = start + at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            pool.submit(post, number)
            number += 1


def run(way: str, scenario: Scenario, wait: float) -> Result:
    for database in (OUR_BROKER, SDK_BROKER):
        redis.Redis.from_url(database).flushdb()
    faults = Faults(latency=0.3)
    watcher = Watcher(faults)
    result = Result()
    with BackgroundServer(watcher.app) as server, tempfile.TemporaryDirectory() as workdir:
        url, processes = start_way(way, server.url, workdir)
        watcher.start()
        try:
            if scenario.outage is not None:
                start, length = scenario.outage
                down_at = time.time() + start
                faults.outage(length, down_at)
            post_load(url, scenario, result, f"{way}{int(time.time())}")
            deadline = time.time() + wait
            while time.time() < deadline and not set(result.posted) <= set(watcher.reached):
                time.sleep(0.2)
        finally:
            watcher.stop()
            stop(processes)
    result.reached = {email: watcher.reached[email] - at for email, at in result.posted.items()
                      if email in watcher.reached}
    result.calls = watcher.calls
    result.throttled = watcher.fake.limiter.throttled
    if scenario.outage is not None:
        # When the last post accepted while Klaviyo was down reached it,
        # counted from Klaviyo's return.
        back = down_at + scenario.outage[1]
        during = [watcher.reached.get(email, math.inf) for email, at in result.posted.items()
                  if down_at <= at < back]
        result.back_at = max(during) - back if during else None
    return result


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def report(scenario: Scenario, results: dict[str, Result]) -> None:
    print(f"\n{scenario.name}:")
    header = ("| way | visitor p50 / p99 | visitor errors | reached Klaviyo p50 / p99 "
              "| not reached | API calls | submissions a call | 429s |")
    if scenario.outage is not None:
        header += " posted while down: all reached, after Klaviyo was back |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for way, result in results.items():
        reached = list(result.reached.values())
        line = (f"| {WAYS[way]} | {percentile(result.visitor, .5) * 1000:.0f} ms / "
                f"{percentile(result.visitor, .99) * 1000:.0f} ms | {result.errors} | "
                f"{percentile(reached, .5):.1f} s / {percentile(reached, .99):.1f} s | "
                f"{len(result.posted) - len(reached)} | {result.calls} | "
                f"{len(result.posted) / max(result.calls, 1):.1f} | {result.throttled} |")
        if scenario.outage is not None:
            line += f" {result.back_at:.1f} s |" if result.back_at is not None else " - |"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--scenarios", default="steady,outage,burst")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="shorten every scenario (0.25: a quarter of the time)")
    parser.add_argument("--wait", type=float, default=240.0,
                        help="seconds after the load to wait for delivery")
    args = parser.parse_args()
    scale = args.scale
    scenarios = {
        "steady": Scenario(f"steady: 20/s for {30 * scale:.0f} s", 20.0, 30 * scale),
        "outage": Scenario(f"outage: 10/s for {120 * scale:.0f} s, Klaviyo down (503) for "
                           f"{60 * scale:.0f} s of it", 10.0, 120 * scale,
                           outage=(30 * scale, 60 * scale)),
        "burst": Scenario(f"burst: {int(2000 * scale)} posts by 32 visitors at once", None, 0,
                          count=int(2000 * scale)),
    }
    print("Klaviyo stand-in: 300 ms a call, Klaviyo's rate limits, import jobs done in 1 s; "
          "gunicorn 4 workers x 8 threads; Celery workers of concurrency 4")
    for name in args.scenarios.split(","):
        scenario = scenarios[name]
        results = {way: run(way, scenario, args.wait) for way in args.ways.split(",")}
        report(scenario, results)


if __name__ == "__main__":
    main()
