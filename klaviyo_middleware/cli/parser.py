"""The ``klaviyo-middleware`` command line: its commands and options, with their help."""

from __future__ import annotations

import argparse
import os
from typing import Any

from klaviyo_middleware import __version__
from klaviyo_middleware.delivery.spool.store import ENV_SPOOL_PATH, default_spool_path
from klaviyo_middleware.klaviyo.client import ENV_API_KEY


def port(text: str) -> int:
    """A TCP port number, for argparse (which then says what is wrong in one line)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="klaviyo-middleware",
        description="Connect any website's forms to Klaviyo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    # Every option says what it does, and --help shows its default.
    commands_add = commands.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        return commands_add(name, **kwargs)

    commands.add_parser = add_parser  # type: ignore[method-assign]

    demo = commands.add_parser("demo", help="run a demo site wrapped in the middleware")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (0.0.0.0: every interface)")
    demo.add_argument("--port", type=port, default=8000,
                      help="port to listen on (0: any free one)")
    demo.add_argument("--real", action="store_true",
                      help=f"deliver to the Klaviyo account of ${ENV_API_KEY} (and "
                      "$KLAVIYO_DEMO_LIST_ID) through the default spool, instead of the "
                      "demo's own fake Klaviyo")

    check = commands.add_parser(
        "check", help="check the key, lists, spool and broker, one line each; exit 1 on "
        "any failure")
    check.add_argument("--list", action="append", default=[], metavar="ID",
                       help="a list id your forms post (repeatable): it must exist")
    check.add_argument("--api-url", default=None,
                       help="Klaviyo's URL (default $KLAVIYO_API_URL or Klaviyo's)")
    check.add_argument("--spool", default=None,
                       help="the spool file (default $KLAVIYO_SPOOL_PATH or the default path)")
    check.add_argument("--broker", default=None,
                       help="with Celery delivery: the broker (default $KLAVIYO_BROKER_URL)")

    fake = commands.add_parser("fake-klaviyo", help="run a fake Klaviyo API for local testing")
    fake.add_argument("--host", default="127.0.0.1", help="address to listen on")
    fake.add_argument("--port", type=port, default=8900, help="port to listen on (0: any free)")
    fake.add_argument("--api-key", help="the only private key accepted (default: any pk_ key)")
    fake.add_argument("--list", action="append", default=[], metavar="ID[:double]",
                      help="a list of the account (repeatable; ':double' makes it double "
                      "opt-in); with any --list, other list ids are unknown (404), without, "
                      "they are created on first use")
    fake.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    fake.add_argument("--error-rate", type=float, default=0.0,
                      help="share of calls answered 503, between 0 and 1")
    fake.add_argument("--outage", type=float, default=0.0, metavar="SECONDS",
                      help="answer 503 to everything for the first SECONDS")
    fake.add_argument("--no-rate-limits", action="store_true",
                      help="do not enforce Klaviyo's per-endpoint rate limits")
    fake.add_argument("--quiet", action="store_true", help="do not print a line per request")
    fake.add_argument("--job-seconds", type=float, default=1.0, metavar="SECONDS",
                      help="how long a profile import job takes to run (default 1)")

    worker = commands.add_parser("worker", help="run a Celery worker delivering to Klaviyo")
    worker.add_argument("--broker", default=os.environ.get("KLAVIYO_BROKER_URL"),
                        help="Redis or RabbitMQ URL (default $KLAVIYO_BROKER_URL)")
    worker.add_argument("--concurrency", type=int, default=2,
                        help="pool processes delivering at once")
    worker.add_argument("--api-url", help="default $KLAVIYO_API_URL or Klaviyo")
    worker.add_argument("--state-url", help="Redis for delivery state "
                        "(default $KLAVIYO_STATE_URL, else the broker if it is Redis)")
    worker.add_argument("--visibility-timeout", type=int, default=3600,
                        help="seconds before a task a dead worker held is given to another "
                        "(Redis broker)")
    worker.add_argument("--bulk-threshold", type=int, metavar="N",
                        help="tasks waiting in the queue that make it a backlog, sent "
                        "through the bulk endpoints (default $KLAVIYO_BULK_THRESHOLD or 20; "
                        "0 sends every submission on its own)")
    worker.add_argument("--bulk-size", type=int, metavar="N",
                        help="submissions in one bulk round (default 1000)")
    worker.add_argument("--lease", type=int, metavar="SECONDS",
                        help="how long a bulk round holds its submissions before another "
                        "worker may take them over (default 60)")
    worker.add_argument("--loglevel", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="Celery's log level")
    worker.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics of every worker process on this port "
                        "(needs the prometheus extra)")
    worker.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDRESS",
                        help="the address the metrics listen on; 0.0.0.0 for every "
                        "interface, only behind a firewall (default 127.0.0.1)")

    celery_state = commands.add_parser("celery", help="dead letters and counts of Celery delivery")
    celery_state.add_argument("action", choices=["stats", "dead", "retry", "forget"],
                              help="stats: counts per account; dead: the dead letters; "
                              "retry: put them back on the queue; forget: erase a person")
    celery_state.add_argument("person", nargs="?", metavar="EMAIL|PHONE",
                              help="forget: the person to erase")
    celery_state.add_argument("--state-url", default=os.environ.get("KLAVIYO_STATE_URL"),
                              help="the workers' Redis (default $KLAVIYO_STATE_URL, else the "
                              "broker if it is Redis, as the workers do)")
    celery_state.add_argument("--broker", default=os.environ.get("KLAVIYO_BROKER_URL"),
                              help="for retry: where to enqueue (default $KLAVIYO_BROKER_URL)")
    celery_state.add_argument("--id", action="append", dest="ids", help="retry: only this one")
    celery_state.add_argument("--list", dest="relist", type=list_change, metavar="OLD=NEW",
                              help="retry: only those naming list OLD (one Klaviyo does not "
                              "have), sent to list NEW instead")
    celery_state.add_argument("--json", action="store_true",
                              help="stats, dead: machine-readable output")
    celery_state.add_argument("--show-personal-data", action="store_true",
                              help="show email addresses and error details in clear")

    spool = commands.add_parser("spool", help="inspect and repair the delivery spool")
    actions = spool.add_subparsers(dest="action", required=True)
    default = os.environ.get(ENV_SPOOL_PATH) or str(default_spool_path())

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("--spool", default=default, help=f"spool file (default {default})")
        return sub

    stats = action("stats", "counts by state, oldest age, pause")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    dead = action("dead", "dead letters with Klaviyo's error")
    dead.add_argument("--json", action="store_true", help="machine-readable output")
    dead.add_argument(
        "--show-personal-data",
        action="store_true",
        help="show email addresses and phone numbers instead of masking them",
    )
    retry = action("retry", "move dead letters back into the spool")
    retry.add_argument("--id", action="append", dest="ids", help="only this submission")
    retry.add_argument("--list", dest="relist", type=list_change, metavar="OLD=NEW",
                       help="only those naming list OLD (one Klaviyo does not have), "
                       "sent to list NEW instead")
    action("resume", "lift the pause a 429 from Klaviyo put on delivery")
    purge = action("purge", "delete dead letters")
    purge.add_argument("--id", action="append", dest="ids", help="only this submission")
    purge.add_argument("--older-than", type=float, metavar="SECONDS", help="only older ones")
    purge.add_argument("--all", action="store_true", help="required to purge everything")
    forget = action("forget", "erase everything kept about one person (an erasure request)")
    forget.add_argument("person", metavar="EMAIL|PHONE",
                        help="an email address, or a phone number in international format")
    return parser


def list_change(value: str) -> tuple[str, str]:
    """``OLD=NEW``: the list id a form named and the one it should have."""
    old, sep, new = value.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise argparse.ArgumentTypeError("give the list ids as OLD=NEW, e.g. --list NOPE=Y6nRLr")
    return old.strip(), new.strip()


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default unless its help already says it, or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == [] \
                or default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"
