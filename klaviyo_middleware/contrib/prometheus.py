"""Prometheus metrics (docs/metrics.md): ``pip install klaviyo_middleware[prometheus]``.

    from klaviyo_middleware.contrib.prometheus import MetricsMiddleware
    application = MetricsMiddleware(KlaviyoMiddleware(app, api_key=...))

counts in this process and answers ``GET /metrics`` with the counters (of
every gunicorn worker, when ``PROMETHEUS_MULTIPROC_DIR`` is set, as
prometheus_client's multi-process mode asks) and the spool's gauges, read
from the shared spool file at each scrape. Celery workers expose theirs
with ``klaviyo-middleware worker --metrics-port 9464``.

No label carries personal data: actions, refusal reasons, endpoint
templates, HTTP statuses and account fingerprints only.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from klaviyo_middleware.contrib import missing_extra

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, make_wsgi_app
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.registry import Collector
except ModuleNotFoundError as exc:
    raise missing_extra(exc, "prometheus") from None

from klaviyo_middleware import metrics
from klaviyo_middleware.redact import get_logger

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = get_logger(__name__)

PREFIX = "klaviyo_middleware"
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Registered with prometheus_client's default registry, so a site that
# already exposes it (django-prometheus, a Flask exporter) shows them too.
ACCEPTED = Counter(f"{PREFIX}_submissions_accepted", "Submissions handed to delivery",
                   ["action"])
REFUSED = Counter(f"{PREFIX}_submissions_refused",
                  "Posts to an action answered with an error, dropped as spam or cancelled",
                  ["reason"])
DELIVERED = Counter(f"{PREFIX}_submissions_delivered", "Submissions Klaviyo has taken in full")
RETRIED = Counter(f"{PREFIX}_submissions_retried", "Delivery attempts that will be retried")
DEAD = Counter(f"{PREFIX}_submissions_dead_lettered",
               "Submissions given up on (Klaviyo refused them for good, or too old)")
KLAVIYO_CALLS = Counter(f"{PREFIX}_klaviyo_requests", "HTTP calls to Klaviyo's API",
                        ["method", "endpoint", "status"])
RATE_LIMITED = Counter(f"{PREFIX}_klaviyo_rate_limited", "Calls Klaviyo answered with 429")


class PrometheusRecorder:
    """The :class:`klaviyo_middleware.metrics.Recorder` that counts in prometheus_client."""

    def accepted(self, action: str) -> None:
        ACCEPTED.labels(action=action).inc()

    def refused(self, reason: str) -> None:
        REFUSED.labels(reason=reason).inc()

    def delivered(self) -> None:
        DELIVERED.inc()

    def retried(self) -> None:
        RETRIED.inc()

    def dead(self) -> None:
        DEAD.inc()

    def klaviyo_call(self, method: str, endpoint: str, status: str) -> None:
        KLAVIYO_CALLS.labels(method=method, endpoint=endpoint, status=status).inc()
        if status == "429":
            RATE_LIMITED.inc()


RECORDER = PrometheusRecorder()


def instrument() -> None:
    """Count in this process (idempotent). In a pre-forking server, call it
    before the fork or in each worker; prometheus_client keeps one file per
    process in multi-process mode."""
    metrics.add_recorder(RECORDER)


class SpoolCollector(Collector):
    """Gauges of a spool file, read when scraped: any process of the site
    sees the same shared file, so one scrape of one process is the truth."""

    def __init__(self, spool_path: str | os.PathLike[str]) -> None:
        self.spool_path = os.fspath(spool_path)
        self._admin: Any = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield _gauge("spool_pending", "Submissions accepted and not yet delivered",
                     stats.get("pending", 0))
        yield _gauge("spool_in_flight", "Submissions being sent right now",
                     stats.get("in_flight", 0))
        yield _gauge("spool_retrying", "Pending submissions that failed at least once",
                     stats.get("retrying", 0))
        yield _gauge("spool_oldest_pending_age_seconds", "Age of the oldest pending submission",
                     stats.get("oldest_pending_age") or 0.0)
        yield _gauge("spool_dead_letters", "Dead letters kept (klaviyo-middleware spool dead)",
                     stats.get("dead", 0))
        yield _gauge("spool_paused_seconds", "Seconds left of a pause Klaviyo asked for (429)",
                     stats.get("paused_for", 0.0))

    def _stats(self) -> dict[str, Any]:
        from klaviyo_middleware.delivery.spool.admin import SpoolAdmin

        with self._lock:
            if self._admin is None:
                try:
                    self._admin = SpoolAdmin(self.spool_path)
                except FileNotFoundError:
                    return {}  # nothing accepted yet: every gauge is zero
            stats: dict[str, Any] = self._admin.stats()
            return stats


class CeleryCollector(Collector):
    """Gauges of Celery delivery, from the workers' Redis state, per account
    (a fingerprint of the API key, never the key)."""

    def __init__(self, state_url: str) -> None:
        self.state_url = state_url

    def collect(self) -> Iterator[Metric]:
        import redis

        from klaviyo_middleware.delivery.celery.pool import RedisPool
        from klaviyo_middleware.delivery.celery.state import RedisState, accounts_in

        dead = _labelled("celery_dead_letters", "Dead letters kept by the Celery workers")
        pooled = _labelled("celery_pooled", "Submissions waiting in the workers' Redis pool")
        paused = _labelled("celery_paused_seconds",
                           "Seconds left of a pause Klaviyo asked for (429)")
        connection = redis.Redis.from_url(self.state_url)
        try:
            for account in accounts_in(connection):
                state = RedisState(self.state_url, account)
                stats = state.stats()
                dead.add_metric([account], stats["dead"])
                pooled.add_metric([account], RedisPool(state).size())
                paused.add_metric([account], stats["paused_for"])
        finally:
            connection.close()
        yield from (dead, pooled, paused)


def registry_for(collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """The registry to expose: every process's counters in multi-process
    mode, this process's (the default registry) otherwise, plus ``collectors``."""
    registry = CollectorRegistry()
    sources: list[Collector] = list(collectors)
    if os.environ.get(MULTIPROCESS_ENV):
        sources.insert(0, MultiProcessCollector(None))  # type: ignore[no-untyped-call]
    else:
        sources.insert(0, _Forwarding(REGISTRY))
    registry.register(_Guarded(sources))
    return registry


def metrics_app(spool_path: str | os.PathLike[str] | None = None,
                celery_state_url: str | None = None) -> WSGIApplication:
    """A WSGI app answering with the metrics in Prometheus' text format."""
    collectors: list[Collector] = []
    if spool_path is not None:
        collectors.append(SpoolCollector(spool_path))
    if celery_state_url is not None:
        collectors.append(CeleryCollector(celery_state_url))
    app: WSGIApplication = make_wsgi_app(registry_for(collectors))
    return app


class MetricsMiddleware:
    """Serve ``path`` with :func:`metrics_app`, pass everything else to ``app``.

    Wrapping a :class:`~klaviyo_middleware.KlaviyoMiddleware` (directly)
    finds its spool by itself; otherwise pass ``spool_path``.
    """

    def __init__(self, app: WSGIApplication, path: str = "/metrics",
                 spool_path: str | os.PathLike[str] | None = None,
                 celery_state_url: str | None = None) -> None:
        self.app = app
        self.path = path
        settings = getattr(app, "settings", None)
        if spool_path is None and getattr(settings, "delivery", None) == "spool":
            spool_path = settings.spool_path  # type: ignore[union-attr]
        instrument()
        self.metrics = metrics_app(spool_path, celery_state_url)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == self.path:
            return self.metrics(environ, start_response)
        return self.app(environ, start_response)


class _Guarded(Collector):
    """Every source's metrics, or as many as could be read: a source that
    fails (Redis away, a worker's file caught mid-write) is tried once
    more, then left out and counted in ``klaviyo_middleware_scrape_errors``,
    so a scrape is never an error page."""

    def __init__(self, sources: list[Collector]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        failed = 0
        for source in self.sources:
            for attempt in (1, 2):
                try:
                    found = list(source.collect())
                except Exception:
                    if attempt == 2:
                        log.exception("klaviyo_middleware: metrics of %r could not be read",
                                      source)
                        failed += 1
                        break
                    time.sleep(0.05)
                else:
                    yield from found
                    break
        yield _gauge("scrape_errors", "Metric sources that could not be read in this scrape",
                     failed)


class _Forwarding(Collector):
    """Another registry's metrics, so the default one can sit beside our gauges."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return iter(self.source.collect())


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _labelled(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=["account"])
