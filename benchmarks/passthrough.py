"""What pass-through traffic pays: bare app vs wrapped, in-process and over HTTP.

    python benchmarks/passthrough.py [--seconds 2] [--no-server]

In-process, each variant is called in a tight loop with a fresh environ;
over HTTP, each is served by waitress and loaded by wrk (Debian's package)
for a few seconds. WhiteNoise and Werkzeug's ProxyFix wrap the same app as
reference points. Ratios are against the bare app in the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix
from whitenoise import WhiteNoise

from klaviyo_middleware import KlaviyoMiddleware

from _support import free_port, wait_for_port

API_KEY = "pk_benchmark_key_0000"


def flask_app() -> Any:
    app = Flask("hello")

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    return app.wsgi_app


def bare_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, World!"]


def variants(inner: Any, spool: str) -> dict[str, Any]:
    return {
        "bare": inner,
        "klaviyo_middleware": KlaviyoMiddleware(inner, api_key=API_KEY, spool_path=spool,
                                                delivery="sync"),
        "klaviyo_middleware (action_field)": KlaviyoMiddleware(
            inner, api_key=API_KEY, delivery="sync", action_field=True),
        "WhiteNoise": WhiteNoise(inner),
        "ProxyFix": ProxyFix(inner),
    }


ENVIRON = {
    "REQUEST_METHOD": "GET", "PATH_INFO": "/", "SCRIPT_NAME": "", "QUERY_STRING": "",
    "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "localhost", "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
    "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
}


# A form post to another page of the site (a contact form), which the app
# reads: with action_field off the middleware only watches the body as the
# app reads it, for a Klaviyo Connect action (web/action_trace.py).
FORM_BODY = b"name=Jane&email=jane%40example.com&message=" + b"Hello+there%21+" * 40
POST_ENVIRON = {**ENVIRON, "REQUEST_METHOD": "POST", "PATH_INFO": "/contact",
                "CONTENT_TYPE": "application/x-www-form-urlencoded",
                "CONTENT_LENGTH": str(len(FORM_BODY))}


def reading_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The bare app, reading the posted form as any app would."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    return bare_app(environ, start_response)


def in_process(app: Callable[..., Any], seconds: float,
               template: dict[str, Any] = ENVIRON, body: bytes = b"") -> float:
    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> None:
        return None

    best = 0.0
    for _ in range(3):  # best of three: the least disturbed by the shared machine
        count = 0
        deadline = time.perf_counter() + seconds / 3
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            for _ in range(200):
                environ = dict(template)
                environ["wsgi.input"] = io.BytesIO(body)
                environ["wsgi.errors"] = io.StringIO()
                answer = app(environ, start_response)
                for _chunk in answer:
                    pass
                close = getattr(answer, "close", None)
                if close is not None:
                    close()
            count += 200
        best = max(best, count / (time.perf_counter() - started))
    return best


def served_app() -> Any:
    """For ``waitress-serve --call``: the variant named by $BENCH_VARIANT."""
    inner = flask_app() if os.environ["BENCH_APP"] == "flask" else bare_app
    return variants(inner, os.environ["BENCH_SPOOL"])[os.environ["BENCH_VARIANT"]]


def over_http(app_name: str, variant: str, seconds: float, spool: str) -> float | None:
    waitress = shutil.which("waitress-serve", path=os.path.dirname(sys.executable))
    wrk = shutil.which("wrk")
    if wrk is None or waitress is None:
        return None
    port = free_port()
    env = dict(os.environ, BENCH_APP=app_name, BENCH_VARIANT=variant, BENCH_SPOOL=spool,
               PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    server = subprocess.Popen(  # noqa: S603 - our own loopback server
        [waitress, f"--listen=127.0.0.1:{port}", "--threads=4", "--call",
         "passthrough:served_app"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        result = subprocess.run(  # noqa: S603 - wrk against our own loopback server
            [wrk, "-t", "1", "-c", "8", "-d", f"{max(1, int(seconds))}s",
             f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True)
    finally:
        server.terminate()
        server.wait(10)
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    return float(match.group(1)) if match else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for label, inner in (("bare WSGI app", bare_app), ("Flask hello world", flask_app())):
            apps = variants(inner, f"{tmp}/{label.split()[0]}.sqlite3")
            print(f"{label}, in-process calls/s (best of 3), ratio to bare:")
            base = in_process(apps["bare"], args.seconds)
            for name, app in apps.items():
                rate = base if name == "bare" else in_process(app, args.seconds)
                print(f"  {name:>34}: {rate:10.0f}  {rate / base:.3f}")
            if label.startswith("bare"):
                posting = variants(reading_app, f"{tmp}/post.sqlite3")
                print("form POST to another page, read by the app, in-process calls/s, "
                      "ratio to bare:")
                base = in_process(posting["bare"], args.seconds, POST_ENVIRON, FORM_BODY)
                for name, app in posting.items():
                    rate = base if name == "bare" else in_process(
                        app, args.seconds, POST_ENVIRON, FORM_BODY)
                    print(f"  {name:>34}: {rate:10.0f}  {rate / base:.3f}")
            if args.no_server or shutil.which("wrk") is None:
                continue
            print(f"{label}, waitress (4 threads) + wrk requests/s, ratio to bare:")
            app_name = "flask" if label.startswith("Flask") else "bare"
            spool = f"{tmp}/http.sqlite3"
            base_http = over_http(app_name, "bare", args.seconds * 2, spool) or 1.0
            for name in apps:
                rate = base_http if name == "bare" else (
                    over_http(app_name, name, args.seconds * 2, spool) or 0.0)
                print(f"  {name:>34}: {rate:10.0f}  {rate / base_http:.3f}")


if __name__ == "__main__":
    main()
