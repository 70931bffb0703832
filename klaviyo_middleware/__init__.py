"""Connect any website's forms to Klaviyo: a WSGI middleware.

    from klaviyo_middleware import KlaviyoMiddleware
    app.wsgi_app = KlaviyoMiddleware(app.wsgi_app, api_key="pk_...")
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # WebOb 1.8 imports the standard library's cgi module at import time,
    # which warns on Python 3.11 and 3.12 (3.13 has legacy-cgi instead). We
    # use none of WebOb's cgi-based parsing (forms are read with multipart),
    # so WebOb is imported here, once and quietly, before anything else can:
    # the warning would otherwise show in every user's test run.
    warnings.filterwarnings("ignore", message="'cgi' is deprecated", category=DeprecationWarning)
    import webob  # noqa: F401

from klaviyo_middleware.delivery.hooks import CancelSubmission
from klaviyo_middleware.errors import ConfigurationError, DeliveryError
from klaviyo_middleware.klaviyo.client import KlaviyoError
from klaviyo_middleware.middleware import KlaviyoMiddleware
from klaviyo_middleware.model.submission import Event, Submission
from klaviyo_middleware.web.form_inputs import hidden_inputs
from klaviyo_middleware.web.mappings import MappingError, formdata_mapping, register_mapping
from klaviyo_middleware.web.redirects import sign_redirect
from klaviyo_middleware.web.security import csrf_token

__version__ = "0.1.0"

__all__ = [
    "CancelSubmission",
    "ConfigurationError",
    "DeliveryError",
    "Event",
    "KlaviyoError",
    "KlaviyoMiddleware",
    "MappingError",
    "Submission",
    "csrf_token",
    "formdata_mapping",
    "hidden_inputs",
    "register_mapping",
    "sign_redirect",
]
