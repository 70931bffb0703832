"""``CSRF_FAILURE_VIEW = "klaviyo_middleware.contrib.django.views.csrf_failure"``.

A form that ``forward``\\s to a Django view but lacks ``{% csrf_token %}``
has its submission accepted (and sent to Klaviyo) before Django's
``CsrfViewMiddleware`` refuses the forwarded POST. Django's own failure page
would then tell the visitor "403 Forbidden" about details that were saved.
This view answers such a request with the middleware's thank-you page
instead, and logs a warning naming the form's path so the developer adds
the token; every other CSRF failure gets Django's own answer. No check is
weakened: the view runs only after Django refused the request, and the
forwarded view itself never runs.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.csrf import csrf_failure as django_csrf_failure

from klaviyo_middleware.contrib.django.wsgi import current
from klaviyo_middleware.middleware import RESULT_KEY
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)


def csrf_failure(request: HttpRequest, reason: str = "", **kwargs: Any) -> HttpResponse:
    result = request.environ.get(RESULT_KEY) or {}
    middleware = current()
    if not (result.get("success") and not result.get("cancelled")) or middleware is None:
        response: HttpResponse = django_csrf_failure(request, reason, **kwargs)
        return response
    log.warning(
        "klaviyo_middleware: submission %s was accepted, then Django refused the POST "
        "forwarded to %s (%s); add {%% csrf_token %%} to the form. The visitor was shown "
        "the thank-you page.", result.get("submission_id"), request.path, reason)
    page = middleware.page(request.environ, 200)
    answer = HttpResponse(page.body, status=200)
    for name in ("Content-Type", "Content-Language", "Cache-Control"):
        if name in page.headers:
            answer[name] = page.headers[name]
    return answer
