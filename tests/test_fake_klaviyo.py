"""klaviyo_middleware.testing.FakeKlaviyo behaves like Klaviyo for what we send."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from webtest import TestApp

from klaviyo_middleware import KlaviyoMiddleware
from klaviyo_middleware.testing import FakeKlaviyo, Faults, serve_fake_klaviyo

from support.factories import spool_delivery, submissions
from support.klaviyo_fake import API_KEY

UPDATE = "/klaviyoConnect/api/updateProfile"
HEADERS = {"Authorization": f"Klaviyo-API-Key {API_KEY}", "revision": "2026-07-15",
           "Content-Type": "application/vnd.api+json", "Accept": "application/vnd.api+json"}


def site(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"site"]


@pytest.fixture
def api():
    fake = FakeKlaviyo(lists={"DOUBLE": "double_opt_in"})
    return fake, TestApp(fake)


def post(app, path, body, status="*", headers=None):
    return app.post_json(path, body, headers={**HEADERS, **(headers or {})}, status=status)


def profile(email="a@example.com", **attributes):
    return {"data": {"type": "profile", "attributes": {"email": email, **attributes}}}


class TestThroughTheMiddleware:
    """The pytest plugin's fixture, with the middleware delivering to it."""

    def test_single_opt_in_subscribe_event_and_membership(self, fake_klaviyo):
        app = TestApp(KlaviyoMiddleware(site, api_key=API_KEY, api_url=fake_klaviyo.url,
                                        delivery="sync"))
        app.post(UPDATE, {"email": "a@example.com", "first_name": "Ann", "list": "NEWS",
                          "event[name]": "Joined", "event[event_id]": "j-1"})
        app.post(UPDATE, {"email": "a@example.com", "event[name]": "Joined",
                          "event[event_id]": "j-1"})
        state = fake_klaviyo.snapshot()
        [person] = state["profiles"]
        assert (person["email"], person["first_name"]) == ("a@example.com", "Ann")
        assert state["consent"][person["id"]]["email_marketing"] == "SUBSCRIBED"
        assert {"id": "NEWS", "members": [person["id"]]}.items() <= \
            next(item for item in state["lists"] if item["id"] == "NEWS").items()
        assert [event["unique_id"] for event in state["events"]] == ["j-1"]

    def test_double_opt_in_is_pending_until_confirmed(self):
        with serve_fake_klaviyo(lists={"DBL": "double_opt_in"}) as fake:
            app = TestApp(KlaviyoMiddleware(site, api_key=API_KEY, api_url=fake.url,
                                            delivery="sync"))
            app.post(UPDATE, {"email": "b@example.com", "list": "DBL"})
            state = fake.snapshot()
            [person] = state["profiles"]
            assert state["consent"][person["id"]]["email_marketing"] == "PENDING"
            assert state["lists"][0]["members"] == []
            [pending] = state["pending_confirmations"]
            assert requests.get(f"{fake.url}/_confirm/{pending['token']}",
                                timeout=5).status_code == 200
            state = fake.snapshot()
            assert state["consent"][person["id"]]["email_marketing"] == "SUBSCRIBED"
            assert state["lists"][0]["members"] == [person["id"]]
            assert requests.get(f"{fake.url}/_confirm/{pending['token']}",
                                timeout=5).status_code == 404

    def test_add_to_list_changes_no_consent(self, fake_klaviyo):
        app = TestApp(KlaviyoMiddleware(site, api_key=API_KEY, api_url=fake_klaviyo.url,
                                        delivery="sync"))
        app.post(UPDATE, {"email": "c@example.com", "list": "VIP", "subscribe": "0"})
        state = fake_klaviyo.snapshot()
        [person] = state["profiles"]
        assert state["consent"] == {}
        assert next(item for item in state["lists"] if item["id"] == "VIP")["members"] == \
            [person["id"]]

    def test_steady_load_gets_no_429_from_klaviyos_limits(self, fake_klaviyo, tmp_path):
        """Our limiter keeps add-to-list (10/s) under Klaviyo's limit, bulk or not."""
        delivery = spool_delivery(tmp_path, api_url=fake_klaviyo.url, sender_threads=4,
                                  batching=False, rate_limit_share=1.0)
        for item in submissions(24, lists=["M1"], confirm_opt_in=False, event=None):
            delivery.submit(item)
        try:
            assert delivery.flush(60)
        finally:
            delivery.close()
        assert fake_klaviyo.fake.limiter.throttled == 0
        members = next(item for item in fake_klaviyo.snapshot()["lists"] if item["id"] == "M1")
        assert len(members["members"]) == 24


class TestKlaviyoSemantics:
    def test_upsert_created_then_updated_and_null_clears(self, api):
        fake, app = api
        first = post(app, "/api/profile-import", profile(first_name="A", title="T"))
        assert first.status_int == 201
        second = post(app, "/api/profile-import",
                      profile(title=None, properties={"x": 1}, location={"city": "Leeds"}))
        assert second.status_int == 200 and second.json["data"]["id"] == first.json["data"]["id"]
        post(app, "/api/profile-import", profile(properties={"y": 2}))
        [person] = fake.state.snapshot()["profiles"]
        assert person["first_name"] == "A" and "title" not in person
        assert person["properties"] == {"x": 1, "y": 2}

    def test_profiles_filter(self, api):
        _, app = api
        post(app, "/api/profile-import", profile("f@example.com"))
        found = app.get('/api/profiles?filter=equals(email,"f@example.com")', headers=HEADERS)
        assert [item["attributes"]["email"] for item in found.json["data"]] == ["f@example.com"]

    def test_get_list_shows_opt_in_process(self, api):
        _, app = api
        answer = app.get("/api/lists/DOUBLE", headers=HEADERS)
        assert answer.json["data"]["attributes"]["opt_in_process"] == "double_opt_in"

    def test_unknown_list_without_auto_create(self):
        app = TestApp(FakeKlaviyo(auto_create_lists=False))
        assert app.get("/api/lists/NOPE", headers=HEADERS, status=404).json["errors"][0][
            "code"] == "not_found"

    def test_bulk_import_reports_a_bad_profile_on_the_job(self, api):
        fake, app = api
        fake.job_seconds = 0.0
        fake.state.refuse("no@example.com", "Suppressed.")
        body = {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
            {"type": "profile", "attributes": {"email": "ok@example.com"}},
            {"type": "profile", "attributes": {"email": "broken"}},
            {"type": "profile", "attributes": {"email": "no@example.com"}}]}},
            "relationships": {"lists": {"data": [{"type": "list", "id": "L9"}]}}}}
        job = post(app, "/api/profile-bulk-import-jobs", body)
        assert job.status_int == 202
        path = f"/api/profile-bulk-import-jobs/{job.json['data']['id']}"
        status = app.get(path, headers=HEADERS).json["data"]["attributes"]
        assert (status["status"], status["completed_count"], status["failed_count"]) == \
            ("complete", 1, 2)
        assert len(fake.state.lists["L9"].members) == 1
        first = app.get(path + "/import-errors?page[size]=1", headers=HEADERS).json
        second = app.get(first["links"]["next"], headers=HEADERS).json
        errors = [item["attributes"] for item in first["data"] + second["data"]]
        assert "next" not in second["links"]
        assert [(error["source"]["pointer"].split("/")[5], error["original_payload"]
                 ["attributes"]["email"]) for error in errors] == \
            [("1", "broken"), ("2", "no@example.com")]
        assert errors[1]["detail"] == "Suppressed."

    def test_an_import_job_shows_nothing_until_it_is_processed(self, api):
        fake, app = api
        fake.job_seconds = 0.3
        post(app, "/api/profile-import", profile("late@example.com", first_name="Single"))
        job = post(app, "/api/profile-bulk-import-jobs", {"data": {
            "type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
                {"type": "profile", "attributes": {"email": "late@example.com",
                                                   "first_name": "Job"}}]}}}})
        path = f"/api/profile-bulk-import-jobs/{job.json['data']['id']}"
        assert app.get(path, headers=HEADERS).json["data"]["attributes"]["status"] == "queued"
        assert [p["first_name"] for p in fake.state.profiles.values()] == ["Single"]
        time.sleep(0.35)
        # Processed after the single import it followed: the job's data wins.
        assert app.get(path, headers=HEADERS).json["data"]["attributes"]["status"] == "complete"
        assert [p["first_name"] for p in fake.state.profiles.values()] == ["Job"]

    def test_events_deduplicated_by_unique_id(self, api):
        fake, app = api
        event = {"data": {"type": "event", "attributes": {
            "properties": {}, "unique_id": "u1",
            "metric": {"data": {"type": "metric", "attributes": {"name": "M"}}},
            "profile": {"data": {"type": "profile", "attributes": {"email": "e@example.com"}}}}}}
        assert post(app, "/api/events", event).status_int == 202
        assert post(app, "/api/events", event).status_int == 202
        assert len(fake.state.events) == 1


class TestValidation:
    @pytest.mark.parametrize(
        ("body", "pointer"),
        [(profile(nickname="x"), "/data/attributes/nickname"),
         (profile("not-an-email"), "/data/attributes/email"),
         (profile(phone_number="0207 946 0958"), "/data/attributes/phone_number"),
         (profile(location={"planet": "Mars"}), "/data/attributes/location/planet"),
         ({"data": {"type": "person", "attributes": {}}}, "/data/type")],
    )
    def test_bad_bodies_get_klaviyos_400(self, api, body, pointer):
        _, app = api
        answer = post(app, "/api/profile-import", body, status=400)
        [error] = answer.json["errors"]
        assert (error["status"], error["code"], error["source"]["pointer"]) == \
            (400, "invalid", pointer)

    @pytest.mark.parametrize(
        ("headers", "status", "code"),
        [({"Authorization": ""}, 401, "not_authenticated"),
         ({"Authorization": "Klaviyo-API-Key AbC123"}, 401, "authentication_failed"),
         ({"revision": ""}, 400, "invalid"),
         ({"revision": "2023-02-22"}, 410, "gone"),
         ({"Content-Type": "text/plain"}, 415, "unsupported_media_type")],
    )
    def test_headers(self, api, headers, status, code):
        _, app = api
        answer = app.post("/api/profile-import", b'{"data": {}}',
                          headers={**HEADERS, **headers}, status=status)
        assert answer.json["errors"][0]["code"] == code

    def test_a_configured_key_is_the_only_one_accepted(self):
        app = TestApp(FakeKlaviyo(api_key="pk_right"))
        post(app, "/api/profile-import", profile(), status=401)


class TestLimitsAndFaults:
    def test_burst_limit_gives_429_with_retry_after(self, api):
        fake, app = api
        post(app, "/api/profile-import", profile("p@example.com"))
        person = fake.state.snapshot()["profiles"][0]["id"]
        body = {"data": [{"type": "profile", "id": person}]}
        # 25 calls cross at most two one-second windows of 10 calls each.
        answers = [post(app, "/api/lists/L1/relationships/profiles", body) for _ in range(25)]
        statuses = [answer.status_int for answer in answers]
        assert statuses.count(204) <= 20
        throttled = next(answer for answer in answers if answer.status_int == 429)
        assert int(throttled.headers["Retry-After"]) >= 1
        assert "Expected available in" in throttled.json["errors"][0]["detail"]

    def test_rate_limits_can_be_switched_off(self):
        app = TestApp(FakeKlaviyo(rate_limits=False))
        assert all(post(app, "/api/profile-import", profile(f"r{n}@example.com")).status_int
                   == 201 for n in range(100))

    def test_error_rate_latency_and_outage(self):
        faults = Faults(error_rate=1.0)
        app = TestApp(FakeKlaviyo(faults=faults))
        assert post(app, "/api/profile-import", profile(), status=503).json["errors"]
        faults.error_rate = 0.0
        faults.latency = 0.2
        started = time.monotonic()
        post(app, "/api/profile-import", profile(), status=201)
        assert time.monotonic() - started >= 0.2
        faults.latency = 0.0
        faults.outage(60)
        post(app, "/api/profile-import", profile(), status=503)

    def test_scripted_failures(self, api):
        fake, app = api
        fake.faults.fail_next("/api/events", 429, retry_after=7)
        answer = post(app, "/api/events", {}, status=429)
        assert answer.headers["Retry-After"] == "7"
        assert post(app, "/api/events", {}, status=400)


def test_fake_klaviyo_command(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "klaviyo_middleware.cli", "fake-klaviyo", "--port", "0",
         "--list", "D1:double"], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()  # type: ignore[union-attr]
        url = line.split()[3]
        answer = requests.get(f"{url}/api/lists/D1", headers=HEADERS, timeout=5)
        assert answer.json()["data"]["attributes"]["opt_in_process"] == "double_opt_in"
        assert requests.get(f"{url}/_state", timeout=5).json()["profiles"] == []
        # One line per request, as a new user watching the terminal expects.
        assert process.stdout.readline().strip() == "GET /api/lists/D1 200"  # type: ignore[union-attr]
        assert process.stdout.readline().strip() == "GET /_state 200"  # type: ignore[union-attr]
        # Lists named with --list are the account's lists: another id is unknown.
        assert requests.get(f"{url}/api/lists/NOPE", headers=HEADERS, timeout=5).status_code == 404
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]


@pytest.mark.parametrize(("arguments", "message"), [
    (["--list", "Y6:triple"], "--list Y6:triple: write ID, ID:single or ID:double"),
    (["--error-rate", "5"], "--error-rate 5: a share between 0 and 1"),
    (["--latency", "-1"], "--latency must not be negative"),
])
def test_fake_klaviyo_command_refuses_what_it_cannot_do(arguments, message):
    finished = subprocess.run(
        [sys.executable, "-m", "klaviyo_middleware.cli", "fake-klaviyo", "--port", "0",
         *arguments], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 2
    assert finished.stderr.strip().startswith(f"klaviyo-middleware: {message}")
    assert "Traceback" not in finished.stderr


@pytest.mark.parametrize("command", ["fake-klaviyo", "demo"])
def test_a_busy_port_is_one_line(command, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        finished = subprocess.run(
            [sys.executable, "-m", "klaviyo_middleware.cli", command, "--port", str(port)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "KLAVIYO_SPOOL_PATH": str(tmp_path / "s.sqlite3")})
    assert finished.returncode == 2
    assert finished.stderr.strip() == (
        f"klaviyo-middleware: cannot listen on 127.0.0.1:{port}: address already in use "
        "(is another one running? try --port)")
