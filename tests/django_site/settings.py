"""docs/django.md settings for a site with a signup form."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TMP = Path(tempfile.gettempdir())

SECRET_KEY = "django-site-for-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "django_site.urls"
WSGI_APPLICATION = "django_site.wsgi.application"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "klaviyo_middleware.contrib.django",
    "django_site",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [HERE / "templates"],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.template.context_processors.i18n",
        "django.contrib.auth.context_processors.auth",
    ]},
}]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.environ.get("DJANGO_SITE_DB", str(TMP / "django_site.sqlite3")),
}}
USE_I18N = True
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("de", "Deutsch")]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

KLAVIYO_MIDDLEWARE = {
    "api_key": "pk_django_site_test_key_0000000000",
    "api_url": os.environ.get("FAKE_KLAVIYO_URL", "http://127.0.0.1:9"),
    "delivery": os.environ.get("KLAVIYO_DELIVERY", "sync"),
    "spool_path": os.environ.get("KLAVIYO_SPOOL_PATH",
                                 str(TMP / "django_site_spool.sqlite3")),
    "page_template": "klaviyo/page.html",
    "before_send": ["django_site.hooks.tag_source"],
}
