"""A small Django project wrapped in the middleware, as the README's "Django"
section sets one up: run by Django's test runner (``tests.py``) and under
gunicorn by ``tests/test_django.py``."""
