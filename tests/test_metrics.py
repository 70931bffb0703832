"""docs/metrics.md: counters and gauges scraped and parsed with
prometheus_client's own parser, in one process and across gunicorn workers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from webtest import TestApp  # noqa: E402

from klaviyo_middleware import KlaviyoMiddleware, metrics  # noqa: E402
from klaviyo_middleware.contrib.prometheus import RECORDER, MetricsMiddleware  # noqa: E402

from support.klaviyo_fake import API_KEY  # noqa: E402
from support.services import free_port  # noqa: E402
from support.waiting import wait_for  # noqa: E402

TESTS = Path(__file__).resolve().parent
UPDATE = "/klaviyoConnect/api/updateProfile"
JSON = {"Accept": "application/json"}


def site(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"site"]


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, labels): value}`` as Prometheus would read the page."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def counting() -> Iterator[None]:
    yield
    metrics.remove_recorder(RECORDER)


@pytest.fixture
def stack(loopback_klaviyo, tmp_path, counting) -> Iterator[tuple[TestApp, KlaviyoMiddleware]]:
    middleware = KlaviyoMiddleware(site, api_key=API_KEY, api_url=loopback_klaviyo.url,
                                   spool_path=tmp_path / "spool.sqlite3", retry_max_age=60)
    yield TestApp(MetricsMiddleware(middleware)), middleware
    middleware.close()


def test_counters_and_gauges_in_one_process(stack, loopback_klaviyo):
    app, middleware = stack
    before = scrape(app.get("/metrics").text)
    for number in range(3):
        app.post(UPDATE, {"email": f"m{number}@example.com", "list": "L1", "subscribe": "0"},
                 headers=JSON)
    app.post(UPDATE, {"email": "not-an-address"}, headers=JSON, status=400)
    app.post(UPDATE, {"email": "x@example.com"}, status=403,
             headers={**JSON, "Origin": "https://elsewhere.example"})
    # Klaviyo refuses one for good: a dead letter (posted once the others
    # are in, it goes alone: one call a step).
    assert middleware.flush(30)
    loopback_klaviyo.fake.fail("/api/profile-import", 400)
    app.post(UPDATE, {"email": "refused@example.com"}, headers=JSON)
    assert middleware.flush(30)
    page = app.get("/metrics")
    assert page.content_type.startswith("text/plain")
    after = scrape(page.text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("klaviyo_middleware_submissions_accepted_total", action="updateProfile") == 4
    assert grew("klaviyo_middleware_submissions_refused_total", reason="invalid") == 1
    assert grew("klaviyo_middleware_submissions_refused_total", reason="cross_site") == 1
    assert grew("klaviyo_middleware_submissions_delivered_total") == 3
    assert grew("klaviyo_middleware_submissions_dead_lettered_total") == 1
    assert grew("klaviyo_middleware_klaviyo_requests_total", method="POST",
                endpoint="/api/profile-import", status="400") == 1
    # Posted together, the three join the list in one round: one call (an
    # import job with the list), or one call a person when alone; counted
    # by template either way.
    assert grew("klaviyo_middleware_klaviyo_requests_total", method="POST",
                endpoint="/api/lists/{id}/relationships/profiles", status="204") + grew(
        "klaviyo_middleware_klaviyo_requests_total", method="POST",
        endpoint="/api/profile-bulk-import-jobs", status="202") >= 1
    assert not any("L1" in dict(labels).get("endpoint", "") for _, labels in after)
    assert value(after, "klaviyo_middleware_spool_pending") == 0
    assert value(after, "klaviyo_middleware_spool_dead_letters") == 1
    assert value(after, "klaviyo_middleware_spool_oldest_pending_age_seconds") == 0
    assert "example.com" not in page.text and "not-an-address" not in page.text


def test_429s_are_counted_apart(stack, loopback_klaviyo):
    app, middleware = stack
    before = scrape(app.get("/metrics").text)
    loopback_klaviyo.fake.fail("/api/profile-import", 429, headers={"Retry-After": "1"})
    app.post(UPDATE, {"email": "slow@example.com"}, headers=JSON)
    assert middleware.flush(30)
    after = scrape(app.get("/metrics").text)
    assert value(after, "klaviyo_middleware_klaviyo_rate_limited_total") - \
        value(before, "klaviyo_middleware_klaviyo_rate_limited_total") == 1
    assert value(after, "klaviyo_middleware_submissions_retried_total") - \
        value(before, "klaviyo_middleware_submissions_retried_total") == 1


def test_gauges_before_anything_was_accepted(tmp_path, counting):
    app = TestApp(MetricsMiddleware(site, spool_path=tmp_path / "never.sqlite3"))
    samples = scrape(app.get("/metrics").text)
    assert value(samples, "klaviyo_middleware_spool_pending") == 0
    assert not (tmp_path / "never.sqlite3").exists()
    assert app.get("/").text == "site"


def test_a_failing_recorder_costs_nobody_anything(make_app, klaviyo, caplog):
    class Broken:
        def __getattr__(self, name):
            def fail(*args):
                raise RuntimeError("recorder down")
            return fail

    broken = Broken()
    metrics.add_recorder(broken)  # type: ignore[arg-type]
    try:
        answer = make_app().post(UPDATE, {"email": "a@example.com"}, headers=JSON)
    finally:
        metrics.remove_recorder(broken)  # type: ignore[arg-type]
    assert answer.json["delivered"] is True
    assert "a metrics recorder failed" in caplog.text


def test_gunicorn_workers_add_up(loopback_klaviyo, tmp_path):
    pytest.importorskip("gunicorn")
    multiprocess_dir = tmp_path / "prometheus"
    multiprocess_dir.mkdir()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(TESTS), PROMETHEUS_MULTIPROC_DIR=str(multiprocess_dir),
               KLAVIYO_PRIVATE_API_KEY=API_KEY, KLAVIYO_API_URL=loopback_klaviyo.url,
               KLAVIYO_SPOOL_PATH=str(tmp_path / "spool.sqlite3"))
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "3", "--bind", f"127.0.0.1:{port}",
         "metrics_site:application"], env=env, cwd=TESTS,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(base + "/", timeout=2).text == "site"
        except requests.RequestException:  # not up yet: refused, or slow to answer
            assert server.poll() is None, "gunicorn exited"
            return False

    try:
        wait_for(up, timeout=60)
        for number in range(12):
            # A new connection each time: any worker may take it.
            answer = requests.post(base + UPDATE, data={"email": f"g{number}@example.com"},
                                   headers={**JSON, "Connection": "close"}, timeout=10)
            assert answer.status_code == 200, answer.text

        def totals() -> tuple[float, float, float]:
            samples = scrape(requests.get(base + "/metrics", timeout=10).text)
            return (value(samples, "klaviyo_middleware_submissions_accepted_total",
                          action="updateProfile"),
                    value(samples, "klaviyo_middleware_submissions_delivered_total"),
                    value(samples, "klaviyo_middleware_spool_pending"))

        wait_for(lambda: totals() == (12, 12, 0), timeout=60)
        # Whichever worker answers the scrape, it reports every worker's counts.
        assert {totals() for _ in range(6)} == {(12, 12, 0)}
        assert list(multiprocess_dir.glob("counter_*.db"))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_source_that_cannot_be_read_never_makes_an_error_page(tmp_path, counting, caplog):
    not_a_spool = tmp_path / "app.py"
    not_a_spool.write_text("print('hello')\n" * 200)
    app = TestApp(MetricsMiddleware(site, spool_path=not_a_spool))
    samples = scrape(app.get("/metrics", status=200).text)
    assert value(samples, "klaviyo_middleware_scrape_errors") == 1
    assert ("klaviyo_middleware_spool_pending", ()) not in samples
    assert "could not be read" in caplog.text
