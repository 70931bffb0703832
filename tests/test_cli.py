"""``klaviyo-middleware spool ...`` and the redaction it relies on."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from klaviyo_middleware.cli import main
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.model.submission import Submission
from klaviyo_middleware.redact import redact

from support.factories import identify

ACCOUNT = account_fingerprint("https://klaviyo.test", "pk_test")


@pytest.fixture
def spool_file(tmp_path):
    spool = Spool(tmp_path / "ops.sqlite3", ACCOUNT)
    for number, error in enumerate(
        [{"status": 400, "code": "invalid", "message": "Klaviyo answered 400",
          "detail": "Invalid phone number +44 20 7946 0958 for sarah@example.com",
          "pointer": "/data/attributes/phone_number"},
         {"status": 404, "code": "not_found", "message": "Klaviyo answered 404",
          "detail": "List not found"}]
    ):
        spool.enqueue(Submission(action="updateProfile",
                                 profile={"email": f"sarah{number}@example.com"}), now=10.0)
        [claimed] = spool.claim("w", 1, lease=60, now=10.0)
        claimed.progress.done.append("profile")
        spool.bury("w", claimed, error, now=20.0 + number)
    spool.enqueue(identify("later@example.com"))
    spool.close()
    return str(spool.path)


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), out=out)
    return code, out.getvalue()


def test_stats(spool_file):
    code, text = run("spool", "stats", "--spool", spool_file, "--json")
    stats = json.loads(text)
    assert code == 0
    assert (stats["pending"], stats["dead"], stats["delivered"]) == (1, 2, 0)
    assert stats["oldest_pending_age"] >= 0
    code, text = run("spool", "stats", "--spool", spool_file)
    assert "pending: 1" in text


def test_dead_masks_personal_data_by_default(spool_file):
    code, text = run("spool", "dead", "--spool", spool_file)
    assert code == 0
    assert "sarah0@example.com" not in text and "7946" not in text
    assert "s***@example.com" in text and "2 dead letter(s)" in text
    code, text = run("spool", "dead", "--spool", spool_file, "--json", "--show-personal-data")
    letters = json.loads(text)
    assert letters[0]["email"] == "sarah0@example.com"
    assert "+44 20 7946 0958" in letters[0]["error"]
    assert [letter["status"] for letter in letters] == [400, 404]
    assert letters[0]["done"] == "profile"


def test_retry_one_then_purge_the_rest(spool_file):
    _, text = run("spool", "dead", "--spool", spool_file, "--json")
    first, second = (letter["id"] for letter in json.loads(text))
    assert run("spool", "retry", "--spool", spool_file, "--id", first)[1] == \
        "re-queued 1 submission(s)\n"
    spool = Spool(spool_file, ACCOUNT)
    claimed = spool.claim("w", 10, lease=60)
    retried = [item for item in claimed if item.submission.id == first]
    assert retried and retried[0].progress.done == ["profile"]
    assert run("spool", "purge", "--spool", spool_file)[0] == 2
    assert run("spool", "purge", "--spool", spool_file, "--older-than", "1e10")[1] == \
        "purged 0 dead letter(s)\n"
    remaining = json.loads(run("spool", "dead", "--spool", spool_file, "--json")[1])
    assert [letter["id"] for letter in remaining] == [second]
    assert run("spool", "purge", "--spool", spool_file, "--all")[1] == \
        "purged 1 dead letter(s)\n"
    assert json.loads(run("spool", "stats", "--spool", spool_file, "--json")[1])["dead"] == 0


def test_missing_spool_is_a_clear_error(tmp_path, capsys):
    assert run("spool", "stats", "--spool", str(tmp_path / "none.sqlite3"))[0] == 2
    assert "no spool at" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"print('not a spool')\n" * 100, b""])
def test_a_file_that_is_not_a_spool_is_a_clear_error(tmp_path, capsys, content):
    path = tmp_path / "app.py"
    path.write_bytes(content)
    assert run("spool", "stats", "--spool", str(path))[0] == 2
    err = capsys.readouterr().err
    assert err.startswith(f"klaviyo-middleware: {path} is ")
    assert "not a spool file" in err and len(err.splitlines()) == 1
    assert path.read_bytes() == content  # untouched


def test_another_sqlite_database_is_left_alone(tmp_path, capsys):
    import sqlite3

    path = tmp_path / "site.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER)")
    assert run("spool", "stats", "--spool", str(path))[0] == 2
    assert "an SQLite database but not a spool file" in capsys.readouterr().err
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
    assert tables == ["users"]


def test_retrying_an_id_that_is_no_dead_letter_fails(spool_file, capsys):
    code, text = run("spool", "retry", "--spool", spool_file, "--id", "doesnotexist")
    assert (code, text) == (1, "re-queued 0 submission(s)\n")
    assert "1 of the --id values named no dead letter" in capsys.readouterr().err


def test_senders_of_stopped_processes_are_not_counted(spool_file):
    spool = Spool(spool_file, ACCOUNT)
    spool.register_sender("gone")
    with spool.transaction() as db:  # a killed process: its row stays, its pid is gone
        db.execute("UPDATE senders SET pid = 2147483646 WHERE owner = 'gone'")
    spool.register_sender("here")
    spool.close()
    stats = json.loads(run("spool", "stats", "--spool", spool_file, "--json")[1])
    assert stats["senders"] == 1


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "klaviyo_middleware.cli", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("klaviyo-middleware 0.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("mail sarah.m@example.co.uk now", "mail s***@example.co.uk now"),
     ("call +1 (201) 555-0123!", "call +1 ***!"),
     ("key pk_live_ABC123 leaked", "key pk_*** leaked"),
     ("submission 3f2a9c1e0b7d4e6f", "submission 3f2a9c1e0b7d4e6f"),
     ("id 91d10ef5b764455e91527b982a", "id 91d10ef5b764455e91527b982a"),
     ("tel 020 7946 0958.", "tel 020***.")],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_log_records_are_redacted(caplog):
    from klaviyo_middleware.redact import get_logger
    logger = get_logger("klaviyo_middleware.test")
    with caplog.at_level("INFO"):
        logger.warning("failed for %s with %s", "sarah@example.com", "pk_secret_value")
    assert "sarah@example.com" not in caplog.text and "pk_secret_value" not in caplog.text


def every_option(parser=None, prefix=""):
    import argparse

    from klaviyo_middleware.cli.parser import build_parser

    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_option(sub, f"{prefix} {name}")
        elif action.dest != "help":
            yield prefix.strip(), action


def test_every_option_says_what_it_does():
    silent = [f"{command} {action.option_strings or action.dest}"
              for command, action in every_option() if not action.help]
    assert silent == []


@pytest.mark.parametrize("command", ["demo", "fake-klaviyo", "worker", "check"])
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    expected = {"demo": "port to listen on (0: any free one) (default: 8000)",
                "fake-klaviyo": "port to listen on (0: any free) (default: 8900)",
                "worker": "pool processes delivering at once (default: 2)",
                "check": "a list id your forms post (repeatable): it must exist"}[command]
    assert expected in text


def test_celery_state_url_defaults_to_a_redis_broker(monkeypatch, capsys):
    monkeypatch.delenv("KLAVIYO_STATE_URL", raising=False)
    assert main(["celery", "stats", "--broker", "amqp://guest@localhost//"]) == 2
    assert "celery needs the workers' Redis" in capsys.readouterr().err


def test_worker_metrics_listen_on_loopback_unless_asked(monkeypatch, tmp_path):
    """The counts tell how a site's sign-ups go: not for every interface."""
    pytest.importorskip("prometheus_client")
    import prometheus_client

    from klaviyo_middleware.cli.celery import serve_worker_metrics
    from klaviyo_middleware.cli.parser import build_parser

    served: list[dict[str, object]] = []
    monkeypatch.setattr(prometheus_client, "start_http_server",
                        lambda port, addr="0.0.0.0", **kwargs: served.append(  # noqa: S104
                            {"port": port, "addr": addr}))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    parser = build_parser()
    everywhere = "0.0.0.0"  # noqa: S104 - what the test asks for
    for argv, address in ((["worker", "--metrics-port", "9464"], "127.0.0.1"),
                          (["worker", "--metrics-port", "9464", "--metrics-host", everywhere],
                           everywhere)):
        args = parser.parse_args(argv)
        serve_worker_metrics(args.metrics_host, args.metrics_port, "redis://127.0.0.1:9/0")
        assert served[-1] == {"port": 9464, "addr": address}


class TestCheck:
    """``klaviyo-middleware check``: one line a check, exit 1 on any failure."""

    KEY = "pk_0123456789abcdef0123456789abcdef01"

    def run(self, monkeypatch: pytest.MonkeyPatch, url: str, *argv: str,
            key: str | None = None) -> tuple[int, list[str]]:
        monkeypatch.setenv("KLAVIYO_PRIVATE_API_KEY", key or self.KEY)
        monkeypatch.setenv("KLAVIYO_API_URL", url)
        out = io.StringIO()
        code = main(["check", *argv], out)
        return code, out.getvalue().splitlines()

    def test_a_working_set_up(self, monkeypatch, tmp_path):
        from klaviyo_middleware.testing import serve_fake_klaviyo

        with serve_fake_klaviyo(lists={"Y6nRLr": "double_opt_in"}) as fake:
            code, lines = self.run(monkeypatch, fake.url, "--list", "Y6nRLr",
                                   "--spool", str(tmp_path / "spool.sqlite3"))
            # Nothing was created by the probes.
            assert fake.snapshot()["profiles"] == []
        assert code == 0, lines
        assert all(line.startswith("ok") for line in lines)
        assert any("list Y6nRLr" in line and "double opt-in" in line for line in lines)
        assert [line.split(":")[0].split()[-1] for line in lines[:4]] == [
            "profiles", "events", "subscriptions", "lists"]

    def test_a_typo_in_a_list_id(self, monkeypatch, tmp_path):
        from klaviyo_middleware.testing import serve_fake_klaviyo

        with serve_fake_klaviyo(lists={"Y6nRLr": "single_opt_in"}) as fake:
            code, lines = self.run(monkeypatch, fake.url, "--list", "Y6nRLR",
                                   "--spool", str(tmp_path / "s.sqlite3"))
        assert code == 1
        assert "FAIL  list Y6nRLR: no such list in this account" in "\n".join(lines)

    def test_a_key_klaviyo_refuses(self, monkeypatch, tmp_path):
        from klaviyo_middleware.testing import serve_fake_klaviyo

        with serve_fake_klaviyo(api_key="pk_the_right_one_0000000000000000") as fake:
            code, lines = self.run(monkeypatch, fake.url, "--spool", str(tmp_path / "s"))
        assert code == 1
        assert "Klaviyo refused the key (401)" in lines[0]
        # One refusal is enough: the other scopes are not asked.
        assert not any("events" in line for line in lines)

    def test_a_missing_scope(self, monkeypatch, tmp_path):
        import threading
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        def scoped(environ: dict[str, str], start_response: object) -> list[bytes]:
            # Klaviyo's answers for a key without events:write.
            status = "403 Forbidden" if environ["PATH_INFO"] == "/api/events" \
                else "400 Bad Request"
            start_response(status, [("Content-Type", "application/vnd.api+json")])  # type: ignore[operator]
            return [b'{"errors": []}']

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

        server = make_server("127.0.0.1", 0, scoped, handler_class=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            code, lines = self.run(monkeypatch, f"http://127.0.0.1:{server.server_port}",
                                   "--spool", str(tmp_path / "s"))
        finally:
            server.shutdown()
            server.server_close()
        assert code == 1
        assert [line for line in lines if line.startswith("FAIL")] == [
            "FAIL  key may events:write: the key lacks the events:write scope (403): give it "
            "that scope in Klaviyo, Settings > API keys"]

    @pytest.mark.parametrize("key", ["pk_...", "pk_", "sk_live_12345", "pub_abc"])
    def test_a_placeholder_or_foreign_key(self, monkeypatch, tmp_path, key):
        code, lines = self.run(monkeypatch, "http://127.0.0.1:9", "--spool",
                               str(tmp_path / "s"), key=key)
        assert code == 1
        assert lines[0].startswith("FAIL  key:")

    def test_an_unreachable_broker_and_klaviyo(self, monkeypatch, tmp_path):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        code, lines = self.run(monkeypatch, f"http://127.0.0.1:{closed}", "--spool",
                               str(tmp_path / "s"), "--broker", f"redis://127.0.0.1:{closed}/0")
        assert code == 1
        assert "Klaviyo did not answer (unreachable)" in lines[0]
        assert lines[-1].startswith("FAIL  broker: cannot connect")


class TestOneLineNotATraceback:
    def test_celery_commands_without_celery_installed(self):
        blocked = ("import sys; sys.modules['celery'] = sys.modules['redis'] = "
                   "sys.modules['kombu'] = None; from klaviyo_middleware.cli import main; "
                   "raise SystemExit(main(sys.argv[1:]))")
        for argv in (["celery", "stats", "--state-url", "redis://127.0.0.1:1/0"],
                     ["worker", "--broker", "redis://127.0.0.1:1/0"]):
            finished = subprocess.run(
                [sys.executable, "-c", blocked, *argv], capture_output=True, text=True,
                timeout=60, env={**os.environ, "KLAVIYO_PRIVATE_API_KEY": "pk_test"})
            assert finished.returncode == 2, finished.stderr
            assert "pip install 'klaviyo_middleware[celery]'" in finished.stderr
            assert "Traceback" not in finished.stderr

    def test_an_unreachable_redis(self, capsys):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        assert main(["celery", "stats", "--state-url", f"redis://127.0.0.1:{closed}/0"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "cannot reach the workers' Redis" in error

    def test_a_reader_that_leaves_early(self, spool_file):
        finished = subprocess.run(  # noqa: S602 - the shell makes the pipe under test
            f"{sys.executable} -m klaviyo_middleware.cli spool dead --spool {spool_file} "
            "| head -c 0", shell=True, capture_output=True, text=True, timeout=60)
        assert finished.stderr == ""
