"""The ``klaviyo-middleware`` command: the demo, the fake Klaviyo, checks, the
Celery worker and the operator's commands for the spool and a Celery fleet.

One module a family of commands: ``parser`` (every option and its help),
``spool``, ``celery`` (the worker and the fleet's state), ``fake``; here only
the dispatch and the rule that every failure is one line, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from klaviyo_middleware.cli import celery, fake, spool
from klaviyo_middleware.cli.output import fail
from klaviyo_middleware.cli.parser import build_parser
from klaviyo_middleware.delivery.spool.admin import SpoolAdmin
from klaviyo_middleware.delivery.spool.store import ENV_SPOOL_PATH, NotASpool, default_spool_path
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.client import ENV_API_KEY

# What each optional dependency is installed with.
_EXTRAS = {"celery": "celery", "kombu": "celery", "redis": "celery",
           "prometheus_client": "prometheus"}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """The command line; every failure is one line on stderr, never a traceback."""
    try:
        return _dispatch(argv, out or sys.stdout)
    except BrokenPipeError:
        # `spool stats | head`: the reader left; say nothing more (Python's
        # own advice: point stdout at devnull so its flush at exit is quiet).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ImportError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        return fail(f"this command needs {exc.name}: pip install "
                     f"'klaviyo_middleware[{extra}]'")
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("redis", "kombu", "amqp"):
            return fail(f"cannot reach the workers' Redis or broker ({type(exc).__name__}): "
                         "check --state-url / --broker and that it runs")
        raise


def _dispatch(argv: Sequence[str] | None, out: TextIO) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from klaviyo_middleware.demo.site import serve

        try:
            serve(args.host, args.port, real=args.real)
        except ConfigurationError as exc:
            return fail(str(exc))
        except OSError as exc:
            return fake.cannot_listen(args.host, args.port, exc)
        return 0
    if args.command == "fake-klaviyo":
        return fake.run(args, out)
    if args.command == "check":
        return _check(args, out)
    if args.command == "worker":
        return celery.worker(args)
    if args.command == "celery":
        return celery.run(args, out)
    try:
        admin = SpoolAdmin(args.spool)
    except (FileNotFoundError, NotASpool) as exc:
        return fail(str(exc))
    try:
        return spool.run(args, admin, out)
    finally:
        admin.close()


def _check(args: argparse.Namespace, out: TextIO) -> int:
    """``klaviyo-middleware check``: the key comes from the environment only,
    never the command line (which other users and shell history can see)."""
    from klaviyo_middleware.check import run
    from klaviyo_middleware.delivery.celery.config import ENV_BROKER_URL
    from klaviyo_middleware.klaviyo.account import API_URL, REVISION

    try:
        api_url = API_URL.resolve(args.api_url, os.environ)
        revision = REVISION.resolve(None, os.environ)
    except ConfigurationError as exc:
        return fail(str(exc))
    spool = args.spool or os.environ.get(ENV_SPOOL_PATH) or str(default_spool_path())
    broker = args.broker or os.environ.get(ENV_BROKER_URL)
    passed = run(out, api_key=os.environ.get(ENV_API_KEY), api_url=api_url, revision=revision,
                 lists=args.list, spool_path=spool, broker_url=broker)
    return 0 if passed else 1
