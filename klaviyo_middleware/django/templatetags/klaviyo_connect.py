"""``{% klaviyo_inputs "track" redirect="newsletter/thanks" list="AbC123" subscribe=True %}``

The hidden inputs of a Klaviyo Connect form in a Django template. Redirects
are signed with ``settings.KLAVIYO_SECRET`` when it is set (the middleware's
``secret``). Django's own ``{% csrf_token %}`` still belongs in the form if
it forwards to a Django view.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.conf import settings

from klaviyo_middleware.web.form_inputs import HTML, hidden_inputs

register = template.Library()


@register.simple_tag  # type: ignore[untyped-decorator]
def klaviyo_inputs(action: str = "track", **options: Any) -> HTML:
    options.setdefault("secret", getattr(settings, "KLAVIYO_SECRET", None))
    return hidden_inputs(action, **options)
