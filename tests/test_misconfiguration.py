"""No configuration mistake the operator can correct loses a sign-up the
visitor was thanked for, and each says so in one log line naming the fix."""

from __future__ import annotations

import io

import pytest

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.backend import SpoolDelivery
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.klaviyo.client import KlaviyoClient

from support.factories import sender_options, spool_delivery, submission
from support.klaviyo_fake import API_KEY, API_URL
from support.waiting import wait_for

WRONG_KEY = "pk_wrong_key_00000000000000000000"


def held_for_the_key(spool: Spool) -> int:
    with spool.reading() as db:
        return int(db.execute(
            "SELECT COUNT(*) FROM submissions WHERE "
            "json_extract(last_error, '$.status') = 401").fetchone()[0])


def test_a_site_restarted_with_its_key_corrected_delivers_what_the_wrong_key_held(
        tmp_path, klaviyo, caplog):
    path = tmp_path / "spool.sqlite3"
    wrong_spool = Spool(path, account_fingerprint(API_URL, WRONG_KEY))
    wrong = SpoolDelivery(wrong_spool, KlaviyoClient(WRONG_KEY, api_url=API_URL), Hooks(),
                          sender_options())
    items = [submission(number) for number in range(3)]
    try:
        for item in items:
            wrong.submit(item)
        wait_for(lambda: held_for_the_key(wrong_spool) >= 1, timeout=30)
        assert wrong_spool.dead_letters() == []
    finally:
        wrong.close()
    errors = [record.getMessage() for record in caplog.records
              if record.levelname == "ERROR" and "refused the API key" in record.getMessage()]
    assert len(errors) == 1, errors
    # Klaviyo saw the wrong key, as a site with one would send it.
    assert klaviyo.violations
    assert all(violation.endswith("header Authorization") for violation in klaviyo.violations)
    klaviyo.violations.clear()
    assert klaviyo.events == {}

    right = spool_delivery(tmp_path)  # the same spool file, the corrected key
    try:
        wait_for(lambda: len(klaviyo.events) == 3, timeout=60)
    finally:
        right.close()
    assert set(klaviyo.profiles) == {item.profile["email"] for item in items}
    assert any("took over 3 submissions" in record.getMessage() for record in caplog.records)


def two_sites(tmp_path, status: int) -> tuple[Spool, Spool]:
    """One spool file, two keys: the first's row last failed with ``status``."""
    path = tmp_path / "spool.sqlite3"
    first = Spool(path, account_fingerprint(API_URL, WRONG_KEY))
    second = Spool(path, account_fingerprint(API_URL, API_KEY))
    first.enqueue(submission(1))
    first.move_intake()
    with first.transaction() as db:
        db.execute("UPDATE submissions SET last_error = json_object('status', ?)", (status,))
    return first, second


def test_an_account_whose_sender_runs_keeps_its_rows(tmp_path):
    """Two sites sharing a spool file by mistake never take each other's
    submissions: only an account nobody runs any more is taken over."""
    refused, other = two_sites(tmp_path, 401)
    refused.register_sender("refused-sender")
    try:
        assert other.adopt_refused_accounts() == 0
        refused.unregister_sender("refused-sender")
        assert other.adopt_refused_accounts() == 1
        assert other.outstanding() == 1 and refused.outstanding() == 0
    finally:
        refused.close()
        other.close()


@pytest.mark.parametrize("status", [400, 404])
def test_rows_refused_for_themselves_are_not_taken_over(tmp_path, status):
    first, second = two_sites(tmp_path, status)
    try:
        assert second.adopt_refused_accounts() == 0
    finally:
        first.close()
        second.close()


def test_an_unknown_list_is_named_once_and_one_command_sends_it_right(tmp_path, klaviyo, caplog):
    from klaviyo_middleware.cli import main as cli
    from klaviyo_middleware.delivery import courier

    courier._UNKNOWN_LISTS_SAID.clear()
    klaviyo.state.find_list("L1")
    klaviyo.state.auto_create_lists = False  # Klaviyo has L1 and no other
    delivery = spool_delivery(tmp_path, batching=False)
    items = [submission(number, lists=["NOPE"]) for number in range(2)]
    try:
        for item in items:
            delivery.submit(item)
        assert delivery.flush(30)
        assert len(delivery.spool.dead_letters()) == 2
    finally:
        delivery.close()
    said = [record.getMessage() for record in caplog.records
            if "Klaviyo has no list 'NOPE'" in record.getMessage()]
    assert len(said) == 1, said
    assert "does not exist" in said[0]  # Klaviyo's own reason
    assert "spool retry --list NOPE=RIGHT_ID" in said[0]
    out = io.StringIO()
    assert cli(["spool", "retry", "--list", "NOPE=L1", "--spool",
                str(tmp_path / "spool.sqlite3")], out=out) == 0
    assert "re-queued 2 submission(s) sent to list L1 instead of NOPE" in out.getvalue()
    again = spool_delivery(tmp_path, batching=False)
    try:
        assert again.flush(30)
        assert again.spool.dead_letters() == []
    finally:
        again.close()
    assert {item.profile["email"] for item in items} <= klaviyo.members["L1"]
    assert {f"u-{number}" for number in range(2)} <= set(klaviyo.events)


def test_a_list_change_is_given_as_old_equals_new(tmp_path, capsys):
    from klaviyo_middleware.cli import main as cli

    with pytest.raises(SystemExit):
        cli(["spool", "retry", "--list", "NOPE", "--spool", str(tmp_path / "s.sqlite3")])
    assert "OLD=NEW" in capsys.readouterr().err


UPDATE = "/klaviyoConnect/api/updateProfile"


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelname == "WARNING" and text in record.getMessage()]


def test_a_redirect_to_a_host_not_allowed_names_the_setting_once(app, klaviyo, caplog):
    for _ in range(3):
        app.post(UPDATE, {"email": "a@example.com", "redirect": "https://shop.example.com/thanks"},
                 status=400)
    said = warnings_about(caplog, "allowed_hosts")
    assert len(said) == 1, said
    assert "'shop.example.com'" in said[0] and UPDATE in said[0]
    assert klaviyo.calls == []


def test_a_trick_redirect_is_refused_without_blaming_the_setting(app, klaviyo, caplog):
    app.post(UPDATE, {"email": "a@example.com", "redirect": "javascript:alert(1)"}, status=400)
    assert warnings_about(caplog, "allowed_hosts") == []


def test_a_text_plain_form_names_the_fix_once(app, klaviyo, caplog):
    for _ in range(2):
        app.post(UPDATE, "email=a@example.com", content_type="text/plain", status=415)
    said = warnings_about(caplog, "415")
    assert len(said) == 1, said
    assert "'text/plain'" in said[0] and 'enctype="text/plain"' in said[0]
    assert klaviyo.calls == []


@pytest.mark.parametrize(("integration", "framework", "extra"), [
    ("klaviyo_middleware.contrib.flask", "flask", "flask"),
    ("klaviyo_middleware.contrib.prometheus", "prometheus_client", "prometheus"),
    ("klaviyo_middleware.contrib.django.wsgi", "django", "django"),
])
def test_a_missing_extra_is_named_in_one_line(monkeypatch, integration, framework, extra):
    import importlib
    import sys

    for name in list(sys.modules):
        if name == integration or name.startswith(integration.rsplit(".", 1)[0] + ".") \
                or name == "klaviyo_middleware.contrib.django":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, framework, None)  # as if not installed
    with pytest.raises(ModuleNotFoundError) as missing:
        importlib.import_module(integration)
    assert f'pip install "klaviyo_middleware[{extra}]"' in str(missing.value)
    assert "\n" not in str(missing.value)
