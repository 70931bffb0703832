"""The middleware's own pages rendered with a Django template."""

from __future__ import annotations

from django.core.handlers.wsgi import WSGIRequest
from django.template.loader import render_to_string
from django.utils import translation

from klaviyo_middleware.web.pages import Page, PageRenderer


def django_renderer(template_name: str) -> PageRenderer:
    """A ``page_renderer`` rendering ``template_name`` with ``page`` in its
    context, the page's language active (so the site's own ``{% translate %}``
    strings match) and the site's context processors run."""

    def render_with_django(page: Page) -> str:
        request = WSGIRequest(page.request.environ) if page.request is not None else None
        with translation.override(page.language):
            return str(render_to_string(template_name, {"page": page}, request=request))

    return render_with_django
