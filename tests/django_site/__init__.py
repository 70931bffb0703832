"""A small Django project wrapped in the middleware, as docs/django.md
section sets one up: run by Django's test runner (``tests.py``) and under
gunicorn by ``tests/test_django.py``."""
