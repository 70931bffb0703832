"""Connect any website's forms to Klaviyo: a WSGI middleware.

    from klaviyo_middleware import KlaviyoMiddleware
    app.wsgi_app = KlaviyoMiddleware(app.wsgi_app, api_key="pk_...")
"""

from __future__ import annotations

from .client import KlaviyoError
from .config import ConfigurationError
from .form_inputs import hidden_inputs
from .hooks import CancelSubmission
from .mappings import MappingError, register_mapping
from .middleware import KlaviyoMiddleware
from .redirects import sign_redirect
from .security import csrf_token
from .submission import Event, Submission

__version__ = "0.1.0"

__all__ = [
    "CancelSubmission",
    "ConfigurationError",
    "Event",
    "KlaviyoError",
    "KlaviyoMiddleware",
    "MappingError",
    "Submission",
    "csrf_token",
    "hidden_inputs",
    "register_mapping",
    "sign_redirect",
]
