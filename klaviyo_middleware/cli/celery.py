"""``klaviyo-middleware worker`` and ``klaviyo-middleware celery ...``: a Celery fleet."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import TextIO

from klaviyo_middleware.cli.output import fail, person, requeued
from klaviyo_middleware.cli.spool import describe
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.redact import redact


def worker(args: argparse.Namespace) -> int:
    from klaviyo_middleware.delivery.celery.config import (
        ENV_BULK_SIZE,
        ENV_BULK_THRESHOLD,
        ENV_POOL_LEASE,
        ENV_STATE_URL,
    )
    from klaviyo_middleware.delivery.celery.tasks import QUEUE, make_celery, runtime_for

    if not args.broker:
        return fail("--broker or KLAVIYO_BROKER_URL is required")
    if not os.environ.get("KLAVIYO_PRIVATE_API_KEY"):
        # The key is read from the environment only, never from a flag that
        # would show it in the process list.
        return fail("set KLAVIYO_PRIVATE_API_KEY")
    if args.api_url:
        os.environ["KLAVIYO_API_URL"] = args.api_url
    if args.state_url:
        os.environ[ENV_STATE_URL] = args.state_url
    # Settings travel to the pool processes through the environment, as the
    # key does.
    for value, name in ((args.bulk_threshold, ENV_BULK_THRESHOLD),
                        (args.bulk_size, ENV_BULK_SIZE), (args.lease, ENV_POOL_LEASE)):
        if value is not None:
            os.environ[name] = str(value)
    app = make_celery(args.broker, args.visibility_timeout)
    try:
        # Bad settings stop the worker now, not at its first task.
        runtime = runtime_for(app)
    except ConfigurationError as exc:
        return fail(str(exc))
    if args.metrics_port is not None:
        serve_worker_metrics(args.metrics_host, args.metrics_port, runtime.state.url)
    app.worker_main([
        "worker", "-Q", QUEUE, f"--concurrency={args.concurrency}",
        f"--loglevel={args.loglevel}", "--without-gossip", "--without-mingle",
    ])
    return 0


def serve_worker_metrics(host: str, port: int, state_url: str) -> None:
    """Count in every pool process and serve the sum from this one.

    prometheus_client adds up processes through files in one directory,
    which must be chosen before it is imported; the pool processes fork
    from here and inherit both."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="klaviyo-metrics-")
    from prometheus_client import start_http_server

    from klaviyo_middleware.contrib.prometheus import CeleryCollector, instrument, registry_for

    instrument()
    # Loopback unless asked: the counts say how a site's sign-ups go, and a
    # scraper on the same host (or a sidecar) is the usual reader.
    start_http_server(port, addr=host, registry=registry_for([CeleryCollector(state_url)]))


def run(args: argparse.Namespace, out: TextIO) -> int:
    """``klaviyo-middleware celery stats|dead|retry|forget``."""
    from klaviyo_middleware.delivery.celery.admin import CeleryAdmin

    if not args.state_url and (args.broker or "").startswith(("redis://", "rediss://")):
        args.state_url = args.broker  # where the workers keep it too
    if not args.state_url:
        return fail("celery needs the workers' Redis: --state-url, "
                    "KLAVIYO_STATE_URL, or a Redis KLAVIYO_BROKER_URL")
    admin = CeleryAdmin(args.state_url)
    if args.action == "retry":
        if not args.broker:
            return fail("retry needs --broker or KLAVIYO_BROKER_URL")
        count = admin.retry(args.broker, args.ids, relist=args.relist)
        print(requeued(count, args.relist), file=out)
        return 0
    if args.action == "forget":
        try:
            who = person(args.person or "")
        except ValueError as exc:
            return fail(f"forget needs an email address or phone number: {exc}")
        erased = admin.forget(who.get("email"), who.get("phone_number"))
        print(f"erased about {redact(args.person)}: {erased['dead']} dead letter(s), "
              f"{erased['pooled']} pooled submission(s), {erased['ledger']} ledger "
              f"entry(ies); tasks already in the broker's queue are still delivered", file=out)
        return 0
    if args.action == "stats":
        accounts = admin.stats()
        if args.json:
            for line in accounts:
                print(json.dumps(line), file=out)
            return 0
        # As `spool stats` shows it: a name and its value a line, an account a block.
        for line in accounts:
            for name, value in line.items():
                print(f"{name:>20}: {value}", file=out)
            print(file=out)
        if not accounts:
            print("no Celery delivery state in this Redis", file=out)
        return 0
    letters = [describe(letter, args.show_personal_data) for letter in admin.dead_letters()]
    if args.json:
        print(json.dumps(letters), file=out)
        return 0
    for shown in letters:
        print(f"{shown['id']}  attempts {shown['attempts']}  {shown['email']}\n"
              f"    {shown['error']}", file=out)
    print(f"{len(letters)} dead letter(s)", file=out)
    return 0
