from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def signed_up(request: HttpRequest) -> HttpResponse:
    """The forward target: the middleware's outcome is in the WSGI environ."""
    result = request.environ.get("klaviyo.result") or {}
    errors = request.environ.get("klaviyo.errors")
    template = "signup.html" if errors else "signed_up.html"
    return render(request, template, {"result": result, "errors": errors or {}},
                  status=400 if errors else 200)
