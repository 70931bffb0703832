"""examples/ and the README's Flask one-liner, each exercised for real."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from paste.deploy import loadapp
from webtest import TestApp

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.demo.site import build_demo
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.testing.server import make

from support.klaviyo_fake import API_KEY, API_URL

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def klaviyo_env(monkeypatch, klaviyo):
    monkeypatch.setenv("KLAVIYO_PRIVATE_API_KEY", API_KEY)
    monkeypatch.setenv("KLAVIYO_API_URL", API_URL)
    monkeypatch.syspath_prepend(str(ROOT))
    for name in [name for name in sys.modules if name.startswith("examples")]:
        del sys.modules[name]
    return klaviyo


def signup(app: TestApp, path: str, **fields: str):
    page = app.get("/")
    assert page.status_int == 200
    return app.post(path, {"email": "reader@example.com", **fields})


def test_flask_example(klaviyo_env):
    module = importlib.import_module("examples.flask_app")
    assert isinstance(module.app.wsgi_app, KlaviyoMiddleware)
    app = TestApp(module.app)
    form = app.get("/").forms[0]
    form["email"] = "reader@example.com"
    response = form.submit()
    assert response.status_int == 303 and response.location.endswith("/thanks")
    assert "Thanks" in response.follow().text
    assert module.app.wsgi_app.flush(10)
    assert klaviyo_env.paths() == ["/api/profile-import",
                                   "/api/profile-subscription-bulk-create-jobs", "/api/events"]
    contact = app.post("/klaviyoConnect/api/updateProfile",
                       {"email": "reader@example.com", "forward": "/contact"})
    assert module.app.wsgi_app.flush(10)
    assert contact.text == "Message received from reader@example.com"
    bad = app.post("/klaviyoConnect/api/updateProfile",
                   {"email": "nope", "forward": "/contact"}, status=400)
    assert bad.text == "Please check: email"


def test_pyramid_example(klaviyo_env):
    module = importlib.import_module("examples.pyramid_app")
    middleware = module.main()
    app = TestApp(middleware)
    form = app.get("/").forms[0]
    form["email"] = "reader@example.com"
    response = form.submit()
    assert response.location.endswith("/thanks")
    assert "Thanks" in response.follow().text
    assert middleware.flush(10)
    assert klaviyo_env.paths()[0] == "/api/profile-import"


def test_pyramid_development_ini(klaviyo_env):
    middleware = loadapp("config:examples/development.ini", relative_to=str(ROOT))
    assert isinstance(middleware, KlaviyoMiddleware)
    assert middleware.settings.action_field is True
    app = TestApp(middleware)
    assert "Newsletter" in app.get("/").text
    response = app.post("/", {"action": "klaviyoConnect/api/identify",
                              "email": "reader@example.com",
                              "redirect": "http://localhost/thanks"})
    assert response.location == "http://localhost/thanks"
    assert middleware.flush(10)
    assert klaviyo_env.paths() == ["/api/profile-import"]


def test_bottle_example(klaviyo_env):
    module = importlib.import_module("examples.bottle_app")
    app = TestApp(module.app)
    response = signup(app, "/klaviyoConnect/api/identify", redirect="/thanks")
    assert response.location.endswith("/thanks")
    assert module.app.flush(10)
    assert klaviyo_env.paths() == ["/api/profile-import"]


def test_readme_flask_one_liner_works_as_pasted(klaviyo_env):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- flask-quickstart -->\s*(?:<!-- python: run -->\s*)?"
                      r"```python\n(.*?)```", readme, re.S)
    assert match, "README lost its Flask quick start"
    namespace: dict[str, object] = {"__name__": "readme_quickstart"}
    exec(compile(match.group(1), "README.md", "exec"), namespace)  # noqa: S102
    flask_app = namespace["app"]
    app = TestApp(flask_app)
    response = app.post("/klaviyoConnect/api/updateProfile",
                        {"email": "reader@example.com", "list": "Y6nRLr"},
                        headers={"Accept": "application/json"})
    assert response.json["success"] is True
    assert flask_app.wsgi_app.flush(10)
    assert klaviyo_env.paths()[0] == "/api/profile-import"


def test_a_restarted_demo_starts_fake_and_spool_empty(monkeypatch):
    """Both in memory or both fresh: never "delivered: 9" beside no profiles."""
    monkeypatch.delenv("KLAVIYO_PRIVATE_API_KEY", raising=False)
    monkeypatch.delenv("KLAVIYO_SPOOL_PATH", raising=False)
    first = build_demo("http://127.0.0.1:1")
    app = TestApp(first)
    app.post("/klaviyoConnect/api/updateProfile", {"email": "before@example.com"})
    first.middleware.close()
    second = build_demo("http://127.0.0.1:1")
    try:
        assert second.scratch != first.scratch
        stats = TestApp(second).get("/_demo/spool").json["stats"]
        assert stats is None or stats["pending"] == stats["delivered"] == 0
        assert "a restart starts both empty" in TestApp(second).get("/").text
    finally:
        second.middleware.close()
        for demo in (first, second):
            shutil.rmtree(demo.scratch, ignore_errors=True)


def test_demo_over_a_real_socket(monkeypatch, tmp_path):
    monkeypatch.delenv("KLAVIYO_PRIVATE_API_KEY", raising=False)
    server = make("127.0.0.1", 0, lambda e, s: [])
    base = f"http://127.0.0.1:{server.server_port}"
    server.set_app(build_demo(base, environ={"KLAVIYO_SPOOL_PATH": str(tmp_path / "d.sqlite3")}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with requests.Session() as browser:
            assert "fake Klaviyo" in browser.get(base + "/").text
            answer = browser.post(base + "/klaviyoConnect/api/updateProfile",
                                  data={"email": "demo@example.com", "list": "Y6nRLr",
                                        "redirect": "/thanks"})
            assert answer.url == base + "/thanks" and "Thank you" in answer.text
            # The SMS form, as today's plugin writes it: a phone number alone.
            sms = browser.post(base + "/actions/klaviyoconnect/api/track",
                               data={"profile[phone_number]": "+1 415 555 2671",
                                     "list": "Y6nRLr", "subscribe": "1", "redirect": "thanks"})
            assert sms.url == base + "/thanks"
            bad = browser.post(base + "/klaviyoConnect/api/updateProfile",
                               data={"email": "bad"}, headers={"Accept": "application/json"})
            assert bad.status_code == 400
            assert server.get_app().middleware.flush(10)
            state = browser.get(base + "/_fake-klaviyo/_state").json()
    finally:
        server.shutdown()
        server.server_close()
    [person] = [p for p in state["profiles"] if p.get("email")]
    [texter] = [p for p in state["profiles"] if not p.get("email")]
    assert person["email"] == "demo@example.com"
    # The demo's list uses double opt-in: pending until the person confirms.
    assert state["consent"][person["id"]]["email_marketing"] == "PENDING"
    assert texter["phone_number"] == "+14155552671" and "email" not in texter
    assert state["consent"][texter["id"]] == {**state["consent"][texter["id"]],
                                              "sms_marketing": "PENDING"}
    assert "email_marketing" not in state["consent"][texter["id"]]


def test_make_demo_installs_the_package_alone(tmp_path):
    """`make demo` on a fresh machine: no test toolchain (issue: 82 packages)."""
    import subprocess

    make = shutil.which("make") or "/usr/bin/make"
    planned = subprocess.run([make, "-n", "demo", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    installs = [line for line in planned.splitlines() if "pip install" in line and "-e" in line]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install --quiet -e '.[demo]'"]
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["options.extras_require"]["demo"].strip() == ""


def test_the_demo_never_uses_an_exported_key_unless_asked(tmp_path):
    """The README exports a key for the site; the demo stays on its fake."""
    demo = build_demo("http://127.0.0.1:1", environ={
        "KLAVIYO_PRIVATE_API_KEY": "pk_0123456789abcdef0123456789abcdef01"})
    try:
        assert demo.fake is not None
        assert demo.middleware.settings.api_url == "http://127.0.0.1:1/_fake-klaviyo"
    finally:
        demo.middleware.close()
        shutil.rmtree(demo.scratch, ignore_errors=True)


def test_the_demo_on_a_real_account_needs_a_real_key(monkeypatch, capsys):
    from klaviyo_middleware.cli import main

    monkeypatch.setenv("KLAVIYO_PRIVATE_API_KEY", "pk_...")
    monkeypatch.setenv("KLAVIYO_DEMO_LIST_ID", "Y6nRLr")
    assert main(["demo", "--real", "--port", "0"]) == 2
    assert "placeholder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--port", "99999"])
    assert "99999 is not a port" in capsys.readouterr().err


def test_the_paste_example_shows_the_info_trail():
    """pserve and gunicorn --paste configure logging from the ini file: the
    middleware's INFO lines (accepted, delivered) must show with it."""
    script = ("import logging, logging.config; "
              "logging.config.fileConfig('examples/development.ini'); "
              "logging.getLogger('klaviyo_middleware.middleware').info('accepted 3f2a')")
    finished = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert "INFO klaviyo_middleware.middleware accepted 3f2a" in finished.stderr


def test_the_real_demo_needs_a_list_of_the_account(monkeypatch):
    with pytest.raises(ConfigurationError, match="KLAVIYO_DEMO_LIST_ID"):
        build_demo("http://127.0.0.1:1", environ={"KLAVIYO_PRIVATE_API_KEY": "pk_real_0000"},
                   real=True)


def test_sigterm_stops_the_demo_and_removes_its_scratch_spool(tmp_path):
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("KLAVIYO_")}
    env["TMPDIR"] = str(tmp_path)
    env["PYTHONUNBUFFERED"] = "1"
    demo = subprocess.Popen([sys.executable, "-m", "klaviyo_middleware.cli", "demo", "--port",
                             "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()
        assert "klaviyo_middleware demo on" in first, first
        # Its last line before serving: the demo is up.
        assert "Delivering to the fake Klaviyo" in demo.stdout.readline()
        assert list(tmp_path.glob("klaviyo-middleware-demo-*"))
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        demo.stdout.close()  # type: ignore[union-attr]
    assert list(tmp_path.glob("klaviyo-middleware-demo-*")) == []
