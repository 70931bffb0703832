from __future__ import annotations

import os

from klaviyo_middleware.contrib.django.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_site.settings")
application = get_wsgi_application()
