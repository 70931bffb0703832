"""docs/django.md, followed for real: the test project in
``tests/django_site`` under Django's own test runner, and served by gunicorn
with two workers from its one-line ``wsgi.py``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from klaviyo_middleware.testing import RunningFakeKlaviyo, serve_fake_klaviyo

from support.services import free_port
from support.waiting import wait_for

pytest.importorskip("django")

TESTS = Path(__file__).resolve().parent
UPDATE = "/klaviyoConnect/api/updateProfile"


def django_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(TESTS), DJANGO_SETTINGS_MODULE="django_site.settings",
               DJANGO_SITE_DB=str(tmp_path / "site.sqlite3"),
               KLAVIYO_SPOOL_PATH=str(tmp_path / "spool.sqlite3"), **extra)
    return env


def django_admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "django", *args], env=env, cwd=TESTS,
                          capture_output=True, text=True, timeout=300)


def test_djangos_test_runner(tmp_path):
    finished = django_admin(django_env(tmp_path), "test", "django_site", "-v", "2")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert re.search(r"Ran (\d+) tests", finished.stderr)
    assert int(re.search(r"Ran (\d+) tests", finished.stderr).group(1)) >= 10


def test_manage_py_check_reports_a_bad_setting(tmp_path):
    # The settings module reads KLAVIYO_DELIVERY: a value no option accepts.
    finished = django_admin(django_env(tmp_path, KLAVIYO_DELIVERY="mail"), "check")
    assert finished.returncode != 0
    assert "klaviyo_middleware.E001" in finished.stderr
    assert "delivery" in finished.stderr


@pytest.fixture
def fake() -> Iterator[RunningFakeKlaviyo]:
    with serve_fake_klaviyo(lists={"Y6nRLr": "single_opt_in"}) as running:
        yield running


@pytest.fixture
def gunicorn_site(tmp_path, fake) -> Iterator[str]:
    pytest.importorskip("gunicorn")
    env = django_env(tmp_path, FAKE_KLAVIYO_URL=fake.url, KLAVIYO_DELIVERY="spool")
    migrated = django_admin(env, "migrate", "--no-input")
    assert migrated.returncode == 0, migrated.stderr
    created = django_admin(env, "shell", "-c",
                           "from django.contrib.auth.models import User; "
                           "User.objects.create_user('grace', 'grace@example.com', 'pw-grace-1',"
                           " first_name='Grace')")
    assert created.returncode == 0, created.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{port}",
         "django_site.wsgi:application"],
        env=env, cwd=TESTS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(base + "/", timeout=2).status_code == 200
        except requests.RequestException:  # not up yet: refused, or slow to answer
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            return False

    try:
        wait_for(up, timeout=60)
        yield base
    finally:
        server.terminate()
        server.communicate(timeout=30)


def csrf_token(page: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def test_under_gunicorn_with_two_workers(gunicorn_site, fake):
    base = gunicorn_site
    visitor = requests.Session()
    # The signup form: the template tag's inputs, Django's CSRF token, and a
    # forward to a Django view, which must pass Django's CSRF check.
    form_page = visitor.get(base + "/").text
    answer = visitor.post(base + UPDATE, data={
        "email": "ada@example.com", "list": "Y6nRLr", "subscribe": "1",
        "forward": "/signed-up/", "csrfmiddlewaretoken": csrf_token(form_page)},
        headers={"Referer": base + "/"})
    assert answer.status_code == 200, answer.text
    assert "Welcome aboard" in answer.text

    # A German visitor's mistake: the site's template, German words.
    wrong = visitor.post(base + UPDATE, data={"email": "nope"},
                         headers={"Accept-Language": "de", "Referer": base + "/"})
    assert wrong.status_code == 400
    assert '<body class="django-site">' in wrong.text
    assert "E-Mail-Adresse: Geben Sie eine gültige E-Mail-Adresse ein." in wrong.text

    # A signed-in member: the user mapping reads Django's session.
    member = requests.Session()
    login = member.get(base + "/login/").text
    signed_in = member.post(base + "/login/", data={
        "username": "grace", "password": "pw-grace-1", "csrfmiddlewaretoken": csrf_token(login),
        "next": "/account/"}, headers={"Referer": base + "/login/"})
    assert "Signed in as grace@example.com" in signed_in.text
    saved = member.post(base + UPDATE, data={
        "klaviyoProfileMapping": "user", "email": "someone-else@example.com",
        "list": "Y6nRLr"}, headers={"Accept": "application/json"})
    assert saved.status_code == 200, saved.text

    def delivered() -> bool:
        return {p["email"] for p in fake.snapshot()["profiles"]} == {
            "ada@example.com", "grace@example.com"}

    wait_for(delivered, timeout=60)
    grace = next(p for p in fake.snapshot()["profiles"] if p["email"] == "grace@example.com")
    assert grace["first_name"] == "Grace"


def docs_block(kind: str, starting: str) -> str:
    """The block of docs/django.md in ``kind`` whose first line is ``starting``."""
    text = (TESTS.parent / "docs" / "django.md").read_text(encoding="utf-8")
    for match in re.finditer(rf"^```{kind}\n(.*?)^```", text, re.S | re.M):
        if match.group(1).startswith(starting):
            return match.group(1)
    raise AssertionError(f"no {kind} block starting {starting!r} in docs/django.md")


def test_the_pages_snippets_pasted_into_a_new_project_pass_its_checks(tmp_path):
    """docs/django.md as a stranger follows it: ``startproject``, the
    settings and wsgi.py blocks pasted, the page template saved; Django's
    own checks (ours among them) find nothing to say."""
    made = subprocess.run([sys.executable, "-m", "django", "startproject", "shop", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    settings_file = tmp_path / "shop" / "settings.py"
    template = tmp_path / "shop" / "templates" / "klaviyo" / "page.html"
    template.parent.mkdir(parents=True)
    template.write_text(docs_block("django", "{# templates/klaviyo/page.html #}"))
    settings_file.write_text(
        settings_file.read_text() + "\n" + docs_block("python", "# settings.py")
        + '\nTEMPLATES[0]["DIRS"] = [BASE_DIR / "shop" / "templates"]\n'
        + 'KLAVIYO_MIDDLEWARE["page_template"] = "klaviyo/page.html"\n')
    (tmp_path / "shop" / "wsgi.py").write_text(docs_block("python", "# wsgi.py"))
    env = dict(os.environ, KLAVIYO_PRIVATE_API_KEY="pk_docs_django_000000000000000000",
               KLAVIYO_SPOOL_PATH=str(tmp_path / "spool.sqlite3"))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    checked = subprocess.run([sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues" in checked.stdout
