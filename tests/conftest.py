from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import pytest
import responses
from webtest import TestApp

from klaviyo_middleware import KlaviyoMiddleware, cli
from klaviyo_middleware.delivery.spool.sender import SpoolSender

from support import services
from support.klaviyo_fake import API_KEY, API_URL, LoopbackKlaviyo, MockedKlaviyo
from support.personal_data import Watch, WatchedOut

WATCH = Watch()


# Modules whose tests start processes, servers, brokers' workers or a
# browser, or wait for delivery across real time: `make test-fast` leaves
# them out (`pytest -m "not slow"`) for a loop of seconds; `make test` runs all.
SLOW_MODULES = frozenset({
    "test_browser", "test_celery", "test_redis_pool", "test_spool_processes",
    "test_delivery_survives", "test_spool_budgets", "test_fuzz_server", "test_fuzz",
    "test_docs_site", "test_docs_commands", "test_docs_python", "test_examples",
    "test_packaging", "test_django", "test_batching", "test_spool_delivery",
    "test_person_order", "test_import_jobs", "test_metrics", "test_cli",
    "test_data_we_keep", "test_fake_klaviyo", "test_paste", "test_flask",
    "test_hostile_upstream",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    # This run's own Redis server and RabbitMQ virtual host: another run on
    # the same machine neither sees its data nor eats its tasks.
    services.start_private_redis()
    services.plan_rabbit()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Every process a test started, with its process group (a worker's pool).
    services.stop_all()
    services.drop_rabbit()


def pytest_sessionstart(session: pytest.Session) -> None:
    # Everything the package logs, at every level, passes the watch.
    package = logging.getLogger("klaviyo_middleware")
    package.setLevel(logging.DEBUG)
    package.addHandler(WATCH)


@pytest.fixture(autouse=True)
def _no_personal_data_in_clear(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test whose logs or CLI output showed personal data in clear."""
    for commands in (cli.spool, cli.celery):
        command = commands.run

        def watched(args: Any, *rest: Any, _command: Any = command) -> int:
            *before, out = rest
            tee = WatchedOut(out, WATCH)
            try:
                return int(_command(args, *before, tee))
            finally:
                tee.flush_to_target(bool(getattr(args, "show_personal_data", False)))

        monkeypatch.setattr(commands, "run", watched)
    WATCH.take()
    yield
    found = WATCH.take()
    assert not found, f"personal data or a key in clear: {found[:5]}"


@pytest.fixture(autouse=True)
def _fresh_notices() -> None:
    """Warnings said once per process are said afresh in every test."""
    from klaviyo_middleware import notices
    from klaviyo_middleware.delivery import courier

    notices.forget_all()
    courier._key_refusal_said.clear()
    courier._UNKNOWN_LISTS_SAID.clear()
    courier._outage_said.clear()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KLAVIYO_PRIVATE_API_KEY", "KLAVIYO_API_URL", "KLAVIYO_REVISION"):
        monkeypatch.delenv(name, raising=False)
    # Every test gets its own spool file; none touches ~/.cache.
    monkeypatch.setenv("KLAVIYO_SPOOL_PATH", str(tmp_path / "spool.sqlite3"))


@pytest.fixture(autouse=True)
def _close_senders() -> Iterator[None]:
    """Stop every spool sender a test started, so none outlives its test."""
    before = set(SpoolSender.open_senders())
    yield
    for sender in SpoolSender.open_senders():
        if sender not in before:
            sender.close(timeout=5)


@pytest.fixture
def klaviyo() -> Iterator[MockedKlaviyo]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake = MockedKlaviyo(mock)
        yield fake
    assert fake.violations == [], "requests that Klaviyo would reject"


class RecordingApp:
    """An inner WSGI app that records what reached it and echoes it back."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.calls.append(
            {
                "method": environ["REQUEST_METHOD"],
                "path": environ.get("PATH_INFO", ""),
                "query": environ.get("QUERY_STRING", ""),
                "body": body,
                "result": environ.get("klaviyo.result"),
                "errors": environ.get("klaviyo.errors"),
                "environ": environ,
            }
        )
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Inner", "yes")])
        return [b"inner:", environ.get("PATH_INFO", "").encode("latin-1"), b":", body]


@pytest.fixture
def inner() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def make_app(inner: RecordingApp) -> Callable[..., TestApp]:
    """``make_app(**options)`` → a webtest TestApp around a validated stack."""

    def build(**options: Any) -> TestApp:
        options.setdefault("api_key", API_KEY)
        options.setdefault("api_url", API_URL)
        options.setdefault("sync_retry_budget", 0)
        # Most tests check what Klaviyo received as soon as the answer is
        # back; the spool's own tests ask for it explicitly.
        options.setdefault("delivery", "sync")
        middleware = KlaviyoMiddleware(validator(inner), **options)
        build.middleware = middleware  # type: ignore[attr-defined]
        return TestApp(validator(middleware))

    return build


@pytest.fixture
def app(make_app: Callable[..., TestApp], klaviyo: MockedKlaviyo) -> TestApp:
    return make_app()


@pytest.fixture
def loopback_klaviyo() -> Iterator[LoopbackKlaviyo]:
    """A fake Klaviyo on a real 127.0.0.1 port, reachable from other processes."""
    with LoopbackKlaviyo() as server:
        yield server
    assert server.fake.violations == [], "requests that Klaviyo would reject"
