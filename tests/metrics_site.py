"""A site wrapped in the middleware and the metrics endpoint, for gunicorn
(``tests/test_metrics.py``); configured from the environment."""

from __future__ import annotations

from typing import Any

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.contrib.prometheus import MetricsMiddleware


def site(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"site"]


application = MetricsMiddleware(KlaviyoMiddleware(site))
