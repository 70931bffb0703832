"""``klaviyo-middleware fake-klaviyo``: the shipped fake Klaviyo on a port of its own."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from klaviyo_middleware.cli.output import fail


def run(args: argparse.Namespace, out: TextIO) -> int:
    from klaviyo_middleware.testing import FakeKlaviyo, Faults
    from klaviyo_middleware.testing.server import make

    lists = {}
    for spec in args.list:
        list_id, _, kind = spec.partition(":")
        if not list_id or kind not in ("", "single", "double"):
            return fail(f"--list {spec}: write ID, ID:single or ID:double")
        lists[list_id] = "double_opt_in" if kind == "double" else "single_opt_in"
    if not 0 <= args.error_rate <= 1:
        return fail(f"--error-rate {args.error_rate:g}: a share between 0 and 1 (0.05 is 5%)")
    for name in ("latency", "outage", "job_seconds"):
        if getattr(args, name) < 0:
            return fail(f"--{name.replace('_', '-')} must not be negative")
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
        return cannot_listen(args.host, args.port, exc)
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


def cannot_listen(host: str, port: int, error: OSError) -> int:
    reason = (error.strerror or str(error)).lower()
    return fail(f"cannot listen on {host}:{port}: {reason}"
                 f"{' (is another one running? try --port)' if port else ''}")
