"""The ``klaviyo-middleware`` command: the demo and spool operations."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

from klaviyo_middleware import __version__
from klaviyo_middleware.delivery.spool.admin import SpoolAdmin
from klaviyo_middleware.delivery.spool.store import (
    ENV_SPOOL_PATH,
    DeadLetter,
    NotASpool,
    default_spool_path,
)
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.client import ENV_API_KEY
from klaviyo_middleware.redact import redact

# What each optional dependency is installed with.
_EXTRAS = {"celery": "celery", "kombu": "celery", "redis": "celery",
           "prometheus_client": "prometheus"}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """The command line; every failure is one line on stderr, never a traceback."""
    try:
        return _main(argv, out or sys.stdout)
    except BrokenPipeError:
        # `spool stats | head`: the reader left; say nothing more (Python's
        # own advice: point stdout at devnull so its flush at exit is quiet).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ImportError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        return _fail(f"this command needs {exc.name}: pip install "
                     f"'klaviyo_middleware[{extra}]'")
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("redis", "kombu", "amqp"):
            return _fail(f"cannot reach the workers' Redis or broker ({type(exc).__name__}): "
                         "check --state-url / --broker and that it runs")
        raise


def _main(argv: Sequence[str] | None, out: TextIO) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from klaviyo_middleware.demo.site import serve

        try:
            serve(args.host, args.port, real=args.real)
        except ConfigurationError as exc:
            return _fail(str(exc))
        except OSError as exc:
            return _cannot_listen(args.host, args.port, exc)
        return 0
    if args.command == "fake-klaviyo":
        return _fake_klaviyo(args, out)
    if args.command == "check":
        return _check(args, out)
    if args.command == "worker":
        return _worker(args)
    if args.command == "celery":
        return _celery_state(args, out)
    try:
        admin = SpoolAdmin(args.spool)
    except (FileNotFoundError, NotASpool) as exc:
        return _fail(str(exc))
    try:
        return _spool_command(args, admin, out)
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
        return _fail(str(exc))
    spool = args.spool or os.environ.get(ENV_SPOOL_PATH) or str(default_spool_path())
    broker = args.broker or os.environ.get(ENV_BROKER_URL)
    passed = run(out, api_key=os.environ.get(ENV_API_KEY), api_url=api_url, revision=revision,
                 lists=args.list, spool_path=spool, broker_url=broker)
    return 0 if passed else 1


def _port(text: str) -> int:
    """A TCP port number, for argparse (which then says what is wrong in one line)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0 to 65535)")
    return port


def _parser() -> argparse.ArgumentParser:
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
    demo.add_argument("--port", type=_port, default=8000,
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
    fake.add_argument("--port", type=_port, default=8900, help="port to listen on (0: any free)")
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
    action("resume", "lift the pause a 429 from Klaviyo put on delivery")
    purge = action("purge", "delete dead letters")
    purge.add_argument("--id", action="append", dest="ids", help="only this submission")
    purge.add_argument("--older-than", type=float, metavar="SECONDS", help="only older ones")
    purge.add_argument("--all", action="store_true", help="required to purge everything")
    forget = action("forget", "erase everything kept about one person (an erasure request)")
    forget.add_argument("person", metavar="EMAIL|PHONE",
                        help="an email address, or a phone number in international format")
    return parser


def person(text: str) -> dict[str, str]:
    """``forget``'s argument, normalised as the form fields were: an email
    address or an E.164 phone number. Raises ``ValueError``."""
    from klaviyo_middleware.web import fields

    try:
        if "@" in text:
            return {"email": fields.email(text)}
        return {"phone_number": fields.phone_number(text, None)}
    except fields.FieldError as exc:
        raise ValueError(f"{redact(text)}: {exc}") from None


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default unless its help already says it, or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == [] \
                or default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


def _fake_klaviyo(args: argparse.Namespace, out: TextIO) -> int:
    from klaviyo_middleware.testing import FakeKlaviyo, Faults
    from klaviyo_middleware.testing.server import make

    lists = {}
    for spec in args.list:
        list_id, _, kind = spec.partition(":")
        if not list_id or kind not in ("", "single", "double"):
            return _fail(f"--list {spec}: write ID, ID:single or ID:double")
        lists[list_id] = "double_opt_in" if kind == "double" else "single_opt_in"
    if not 0 <= args.error_rate <= 1:
        return _fail(f"--error-rate {args.error_rate:g}: a share between 0 and 1 (0.05 is 5%)")
    for name in ("latency", "outage", "job_seconds"):
        if getattr(args, name) < 0:
            return _fail(f"--{name.replace('_', '-')} must not be negative")
    faults = Faults(error_rate=args.error_rate, latency=args.latency)
    if args.outage:
        faults.outage(args.outage)
    # Lists named on the command line are the account's lists: an unknown
    # id is then a 404, as Klaviyo answers it, rather than a new list.
    fake = FakeKlaviyo(api_key=args.api_key, lists=lists, faults=faults,
                       auto_create_lists=not lists, rate_limits=not args.no_rate_limits,
                       job_seconds=args.job_seconds)
    try:
        server = make(args.host, args.port, fake if args.quiet else _printing(fake, out))
    except OSError as exc:
        return _cannot_listen(args.host, args.port, exc)
    print(f"fake Klaviyo on http://{args.host}:{server.server_port}  "
          f"(state: /_state; Ctrl+C stops it)", file=out, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _printing(app: Any, out: TextIO) -> Any:
    """The fake, printing one line per request: method, path, status."""

    def printed(environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            query = environ.get("QUERY_STRING")
            path = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
            print(f"{environ.get('REQUEST_METHOD')} {path} {status.split()[0]}",
                  file=out, flush=True)
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return printed


def _cannot_listen(host: str, port: int, error: OSError) -> int:
    reason = (error.strerror or str(error)).lower()
    return _fail(f"cannot listen on {host}:{port}: {reason}"
                 f"{' (is another one running? try --port)' if port else ''}")


def _fail(message: str, code: int = 2) -> int:
    """A mistake the user can fix: one line on stderr, no traceback; the exit code."""
    print(f"klaviyo-middleware: {message}", file=sys.stderr)
    return code


def _worker(args: argparse.Namespace) -> int:
    from klaviyo_middleware.delivery.celery.config import (
        ENV_BULK_SIZE,
        ENV_BULK_THRESHOLD,
        ENV_POOL_LEASE,
        ENV_STATE_URL,
    )
    from klaviyo_middleware.delivery.celery.tasks import QUEUE, make_celery, runtime_for

    if not args.broker:
        return _fail("--broker or KLAVIYO_BROKER_URL is required")
    if not os.environ.get("KLAVIYO_PRIVATE_API_KEY"):
        # The key is read from the environment only, never from a flag that
        # would show it in the process list.
        return _fail("set KLAVIYO_PRIVATE_API_KEY")
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
        return _fail(str(exc))
    if args.metrics_port is not None:
        _serve_worker_metrics(args.metrics_host, args.metrics_port, runtime.state.url)
    app.worker_main([
        "worker", "-Q", QUEUE, f"--concurrency={args.concurrency}",
        f"--loglevel={args.loglevel}", "--without-gossip", "--without-mingle",
    ])
    return 0


def _serve_worker_metrics(host: str, port: int, state_url: str) -> None:
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


def _celery_state(args: argparse.Namespace, out: TextIO) -> int:
    import redis

    from klaviyo_middleware.delivery.celery.pool import RedisPool
    from klaviyo_middleware.delivery.celery.state import RedisState, accounts_in

    if not args.state_url and (args.broker or "").startswith(("redis://", "rediss://")):
        args.state_url = args.broker  # where the workers keep it too
    if not args.state_url:
        return _fail("celery needs the workers' Redis: --state-url, "
                     "KLAVIYO_STATE_URL, or a Redis KLAVIYO_BROKER_URL")
    accounts = accounts_in(redis.Redis.from_url(args.state_url))
    if args.action == "retry" and not args.broker:
        return _fail("retry needs --broker or KLAVIYO_BROKER_URL")
    if args.action == "forget":
        return _celery_forget(args, accounts, out)
    for account in accounts:
        state = RedisState(args.state_url, account)
        if args.action == "stats":
            print(json.dumps({"account": account, **state.stats(),
                              "pooled": RedisPool(state).size()}), file=out)
            continue
        if args.action == "retry":
            print(f"re-queued {_requeue(state, args.broker, args.ids)} submission(s)", file=out)
            continue
        for letter in state.dead_letters():
            email = str(letter["submission"]["profile"].get("email", ""))
            error = " ".join(str(part) for part in (letter["error"].get("message"),
                                                    letter["error"].get("detail")) if part)
            if not args.show_personal_data:
                email, error = redact(email), redact(error)
            print(f"{letter['id']}  attempts {letter['attempts']}  {email}\n    {error}",
                  file=out)
    return 0


def _celery_forget(args: argparse.Namespace, accounts: list[str], out: TextIO) -> int:
    from klaviyo_middleware.delivery.celery.ledger import Ledger
    from klaviyo_middleware.delivery.celery.pool import RedisPool
    from klaviyo_middleware.delivery.celery.state import RedisState

    try:
        who = person(args.person or "")
    except ValueError as exc:
        return _fail(f"forget needs an email address or phone number: {exc}")
    email, phone = who.get("email"), who.get("phone_number")
    dead = pooled = 0
    for account in accounts:
        state = RedisState(args.state_url, account)
        dead += state.forget(email, phone)
        pool = RedisPool(state)
        pooled += pool.forget(email, phone)
        # The delivery-order keys are hashed, but still about the person.
        pool.forget_person(email, phone)
    recorded = Ledger(args.state_url).forget(email, phone)
    print(f"erased about {redact(args.person)}: {dead} dead letter(s), {pooled} pooled "
          f"submission(s), {recorded} ledger entry(ies); tasks already in the broker's "
          f"queue are still delivered", file=out)
    return 0


def _requeue(state: Any, broker: str, ids: list[str] | None) -> int:
    """Dead letters back onto the queue; finished steps stay finished."""
    from klaviyo_middleware.delivery.celery.backend import CeleryDelivery
    from klaviyo_middleware.delivery.celery.tasks import make_celery
    from klaviyo_middleware.model.progress import Progress
    from klaviyo_middleware.model.submission import Submission

    # Enqueued as the web nodes do it (ledger included, with a Redis broker).
    delivery = CeleryDelivery(make_celery(broker), owns_app=True)
    letters = state.take_dead(ids)
    requeued = 0
    try:
        for letter in letters:
            submission = Submission.from_dict(letter["submission"])
            progress = Progress.from_dict(letter["progress"])
            state.save_progress(submission.id, progress)
            state.redis.srem(state.prefix + "finished", submission.id)
            if delivery.submit(submission).accepted:
                requeued += 1
            else:
                # The broker refused it: back to the dead letters, not lost.
                state.bury(submission, progress, letter["error"], letter["attempts"])
    finally:
        delivery.close()
    return requeued


def _spool_command(args: argparse.Namespace, admin: SpoolAdmin, out: TextIO) -> int:
    if args.action == "stats":
        stats = admin.stats()
        if args.json:
            print(json.dumps(stats), file=out)
        else:
            for name, value in stats.items():
                print(f"{name:>20}: {value}", file=out)
        return 0
    if args.action == "dead":
        letters = [_describe(letter, args.show_personal_data) for letter in admin.dead_letters()]
        if args.json:
            print(json.dumps(letters), file=out)
        else:
            for letter in letters:
                print(
                    f"{letter['id']}  dead {letter['dead_at']}  attempts {letter['attempts']}  "
                    f"{letter['action']} for {letter['email']}  done: {letter['done'] or '-'}\n"
                    f"    {letter['error']}",
                    file=out,
                )
            print(f"{len(letters)} dead letter(s)", file=out)
        return 0
    if args.action == "retry":
        requeued = admin.retry(args.ids)
        print(f"re-queued {requeued} submission(s)", file=out)
        if args.ids and requeued < len(set(args.ids)):
            # Named ones that are not dead letters (already retried, purged, a typo).
            return _fail(f"{len(set(args.ids)) - requeued} of the --id values named no "
                         "dead letter (see `spool dead`)", code=1)
        return 0
    if args.action == "resume":
        lifted = admin.resume()
        print(f"lifted a pause of {lifted:.0f} s" if lifted else "delivery was not paused",
              file=out)
        return 0
    if args.action == "forget":
        try:
            who = person(args.person)
        except ValueError as exc:
            return _fail(str(exc))
        removed = admin.forget(**who)
        print(f"erased {removed['queued']} queued submission(s) and {removed['dead']} dead "
              f"letter(s) about {redact(args.person)} from {admin.spool.path}", file=out)
        return 0
    if args.ids is None and args.older_than is None and not args.all:
        return _fail("purge needs --id, --older-than or --all")
    print(f"purged {admin.purge(args.ids, args.older_than)} dead letter(s)", file=out)
    return 0


def _describe(letter: DeadLetter, personal: bool) -> dict[str, Any]:
    error = letter.error
    text = " ".join(
        str(part)
        for part in (error.get("message"), error.get("detail"), error.get("pointer"))
        if part
    )
    shown = text if personal else redact(text)
    email = letter.email
    return {
        "id": letter.id,
        "dead_at": datetime.fromtimestamp(letter.dead_at, timezone.utc).isoformat(
            timespec="seconds"
        ),
        "attempts": letter.attempts,
        "action": letter.submission.action if letter.submission else "unreadable",
        "email": email if personal else redact(email),
        "done": ", ".join(letter.progress.done),
        "status": error.get("status"),
        "code": error.get("code"),
        "error": shown,
    }


if __name__ == "__main__":
    raise SystemExit(main())
