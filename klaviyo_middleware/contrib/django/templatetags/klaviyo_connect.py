"""``{% load klaviyo_connect %}``: a Klaviyo Connect form's hidden inputs.

    {% klaviyo_inputs "track" redirect="newsletter/thanks" list="AbC123" subscribe=True %}

Redirects are signed with ``KLAVIYO_MIDDLEWARE["secret"]`` when it is set,
as the middleware then requires. Django's ``{% csrf_token %}`` still
belongs in a form that ``forward``\\s to a view.
"""

from __future__ import annotations

from typing import Any

from django import template

from klaviyo_middleware.contrib.django.conf import configured
from klaviyo_middleware.web.form_inputs import HTML, hidden_inputs

register = template.Library()


@register.simple_tag  # type: ignore[untyped-decorator]
def klaviyo_inputs(action: str = "track", **options: Any) -> HTML:
    options.setdefault("secret", configured().get("secret"))
    return hidden_inputs(action, **options)
