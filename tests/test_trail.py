"""A visible trail (docs/security.md, "Data we keep"): one INFO line when a
submission is accepted and one when it is delivered, with the same id, the
person masked."""

from __future__ import annotations

import logging

UPDATE = "/klaviyoConnect/api/updateProfile"


def info_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.INFO and record.name.startswith("klaviyo_middleware")]


def test_accepted_and_delivered_lines_share_the_id(app, klaviyo, caplog):
    with caplog.at_level(logging.INFO, logger="klaviyo_middleware"):
        answer = app.post(UPDATE, {"email": "sarah@example.com", "list": "L1",
                                   "event[name]": "Signed up"},
                          headers={"Accept": "application/json"})
    submission_id = answer.json["submission_id"]
    accepted = [line for line in info_lines(caplog) if "accepted" in line]
    delivered = [line for line in info_lines(caplog) if line.endswith("to Klaviyo")]
    assert accepted == [
        f"klaviyo_middleware: accepted {submission_id}: updateProfile for s***@example.com, "
        "lists [L1], steps [profile, subscribe:L1, event] (delivered)"]
    assert delivered == [
        f"klaviyo_middleware: delivered {submission_id} (updateProfile) to Klaviyo"]


def test_the_spool_says_queued_then_delivered(make_app, klaviyo, caplog, tmp_path):
    app = make_app(delivery="spool", spool_path=tmp_path / "s.sqlite3")
    with caplog.at_level(logging.INFO, logger="klaviyo_middleware"):
        answer = app.post(UPDATE, {"email": "tom@example.com"},
                          headers={"Accept": "application/json"})
        assert make_app.middleware.flush(30)
    lines = info_lines(caplog)
    submission_id = answer.json["submission_id"]
    assert any(line.endswith("(queued)") and submission_id in line for line in lines)
    assert f"klaviyo_middleware: delivered {submission_id} (updateProfile) to Klaviyo" in lines
    make_app.middleware.close()


def test_nothing_at_warning_level(app, klaviyo, caplog):
    with caplog.at_level(logging.WARNING, logger="klaviyo_middleware"):
        app.post(UPDATE, {"email": "quiet@example.com"})
    assert [r for r in caplog.records if r.name.startswith("klaviyo_middleware")] == []


def test_a_track_post_is_logged_as_track(app, klaviyo, caplog):
    """Today's plugin forms post ``track``: the trail names what the form
    posted (the JSON answer does too), not our internal name for it."""
    with caplog.at_level(logging.INFO, logger="klaviyo_middleware"):
        answer = app.post("/actions/klaviyoconnect/api/track",
                          {"email": "sarah@example.com", "event[name]": "Viewed"},
                          headers={"Accept": "application/json"})
    accepted = [line for line in info_lines(caplog) if "accepted" in line]
    assert accepted and accepted[0].startswith(
        f"klaviyo_middleware: accepted {answer.json['submission_id']}: track for ")
