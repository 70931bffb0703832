"""The Klaviyo client and synchronous delivery: errors, retries, steps done once."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import responses

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.sync import SyncDelivery
from klaviyo_middleware.klaviyo.client import (
    MAX_RETRY_AFTER,
    KlaviyoClient,
    KlaviyoError,
    error_from_response,
)
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.submission import Submission

from support.factories import HookRecorder, submission
from support.klaviyo_fake import API_KEY, API_URL

UPDATE = "/klaviyoConnect/api/updateProfile"
# Two subscribe calls a submission: a retried step must not repeat the other.
TWO_LISTS = ["L1", "L2"]


def sync(budget: float = 100.0,
         attempts: int = 5) -> tuple[SyncDelivery, HookRecorder, list[float]]:
    recorder = HookRecorder()
    sleeps: list[float] = []
    client = KlaviyoClient(API_KEY, api_url=API_URL)
    delivery = SyncDelivery(client, recorder.hooks,
                            RetryPolicy(max_attempts=attempts, budget=budget),
                            sleep=sleeps.append)
    return delivery, recorder, sleeps


class TestSyncDelivery:
    def test_every_step_once_in_order(self, klaviyo):
        delivery, recorder, _ = sync()
        outcome = delivery.submit(submission(lists=TWO_LISTS))
        assert outcome.accepted and outcome.delivered
        assert outcome.profile_id and outcome.profile_id.startswith("01")
        assert klaviyo.paths() == [
            "/api/profile-import",
            "/api/profile-subscription-bulk-create-jobs",
            "/api/profile-subscription-bulk-create-jobs",
            "/api/events",
        ]
        assert len(recorder.delivered) == 1

    def test_retry_resumes_without_repeating_done_steps(self, klaviyo):
        klaviyo.fail("/api/events", 503, times=2)
        delivery, recorder, sleeps = sync()
        outcome = delivery.submit(submission(lists=TWO_LISTS))
        assert outcome.delivered
        # The subscribes were accepted once: a second could mail a second confirmation.
        assert klaviyo.paths().count("/api/profile-subscription-bulk-create-jobs") == 2
        assert klaviyo.paths().count("/api/profile-import") == 1
        assert klaviyo.paths().count("/api/events") == 3
        assert [status for status, _ in recorder.retries] == [503, 503]
        assert len(sleeps) == 2

    def test_429_waits_exactly_retry_after(self, klaviyo):
        klaviyo.fail("/api/profile-import", 429, headers={"Retry-After": "3"})
        delivery, recorder, sleeps = sync()
        assert delivery.submit(submission(lists=[], event=None)).delivered
        assert sleeps == [3.0]
        assert recorder.retries == [(429, 3.0)]

    def test_429_retry_after_from_detail_when_header_missing(self, klaviyo):
        klaviyo.fail("/api/profile-import", 429, body={"errors": [{
            "id": "x", "code": "throttled", "title": "Request was throttled.",
            "detail": "Request was throttled. Expected available in 7 seconds."}]})
        delivery, _, sleeps = sync()
        assert delivery.submit(submission(lists=[], event=None)).delivered
        assert sleeps == [7.0]

    def test_retry_after_beyond_budget_gives_up(self, klaviyo):
        klaviyo.fail("/api/profile-import", 429, headers={"Retry-After": "30"})
        delivery, recorder, sleeps = sync(budget=5)
        outcome = delivery.submit(submission(lists=TWO_LISTS))
        assert not outcome.accepted
        assert outcome.error is not None and outcome.error.status == 429
        assert sleeps == [] and recorder.dead == []

    def test_backoff_is_jittered_exponential_within_cap(self, klaviyo):
        klaviyo.fail("/api/profile-import", 500, times=4)
        delivery, _, sleeps = sync(attempts=5)
        assert delivery.submit(submission(lists=[], event=None)).delivered
        assert len(sleeps) == 4
        for attempt, delay in enumerate(sleeps, start=1):
            assert 0 <= delay <= 0.5 * 2 ** (attempt - 1)

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 501])
    def test_permanent_errors_are_not_retried(self, klaviyo, status):
        klaviyo.fail("/api/profile-import", status)
        delivery, recorder, sleeps = sync()
        outcome = delivery.submit(submission(lists=TWO_LISTS))
        assert not outcome.accepted
        assert klaviyo.paths() == ["/api/profile-import"]
        assert sleeps == []
        assert [error.status for _, error in recorder.dead] == [status]

    def test_attempts_are_bounded(self, klaviyo):
        klaviyo.fail("/api/profile-import", 500, times=10)
        delivery, _, sleeps = sync(attempts=3)
        assert not delivery.submit(submission(lists=TWO_LISTS)).accepted
        assert klaviyo.paths().count("/api/profile-import") == 3
        assert len(sleeps) == 2

    def test_an_observer_that_raises_loses_nothing(self, klaviyo, caplog):
        def explode(_: Submission) -> None:
            raise RuntimeError("observer bug")

        client = KlaviyoClient(API_KEY, api_url=API_URL)
        delivery = SyncDelivery(client, Hooks(on_delivered=explode))
        assert delivery.submit(submission(lists=TWO_LISTS)).delivered
        assert "observer" in caplog.text


class TestErrorParsing:
    def _error(self, status: int, body: bytes, headers: dict[str, str]) -> KlaviyoError:
        with responses.RequestsMock() as mock:
            mock.add(responses.POST, API_URL + "/api/events", status=status, body=body,
                     headers=headers)
            client = KlaviyoClient(API_KEY, api_url=API_URL)
            with pytest.raises(KlaviyoError) as caught:
                client.create_event({})
        return caught.value

    def test_json_api_error(self):
        body = json.dumps({"errors": [{"id": "1", "status": 400, "code": "invalid",
                                       "title": "Invalid input.", "detail": "a@b.c is bad",
                                       "source": {"pointer": "/data/attributes/email"}}]})
        error = self._error(400, body.encode(), {"Content-Type": "application/vnd.api+json"})
        assert (error.status, error.code, error.pointer) == (400, "invalid",
                                                             "/data/attributes/email")
        assert error.detail == "a@b.c is bad"
        assert not error.transient
        assert "a@b.c" not in str(error)

    def test_html_403_bot_challenge(self):
        error = self._error(403, b"<html><body>Just a moment...</body></html>",
                            {"Content-Type": "text/html", "cf-mitigated": "challenge"})
        assert error.status == 403 and not error.transient
        assert "bot challenge" in str(error)

    @pytest.mark.parametrize("body", [b"", b"null", b"[]", b'{"errors": "nope"}',
                                      b'{"errors": [1]}', b"\xff\xfe"])
    def test_odd_bodies(self, body):
        error = self._error(500, body, {})
        assert error.status == 500 and error.transient

    def test_retry_after_http_date(self):
        import requests

        response = requests.Response()
        response.status_code = 429
        soon = datetime.now(timezone.utc) + timedelta(seconds=120)
        response.headers["Retry-After"] = format_datetime(soon, usegmt=True)
        error = error_from_response("/api/events", response)
        assert error.retry_after is not None and 100 < error.retry_after <= 120

    @pytest.mark.parametrize(("header", "expected"), [
        ("1e12", MAX_RETRY_AFTER), ("inf", MAX_RETRY_AFTER),
        ("Wed, 21 Oct 2099 07:28:00 GMT", MAX_RETRY_AFTER),
        ("nan", None), ("-5", 0.0), ("soon", None),
    ])
    def test_retry_after_is_capped_and_nonsense_ignored(self, header, expected):
        import requests

        response = requests.Response()
        response.status_code = 429
        response.headers["Retry-After"] = header
        error = error_from_response("/api/events", response)
        assert error.retry_after == expected


@pytest.fixture
def loopback() -> Iterator[tuple[str, dict[str, Any]]]:
    """A real HTTP server on 127.0.0.1 whose behaviour a test sets."""
    behaviour: dict[str, Any] = {"delay": 0.0, "status": 202}
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if behaviour["delay"]:
                release.wait(behaviour["delay"])
            self.send_response(behaviour["status"])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", behaviour
    release.set()
    server.shutdown()
    server.server_close()


class TestRealNetwork:
    def test_read_timeout_is_transient(self, loopback):
        url, behaviour = loopback
        behaviour["delay"] = 2.0
        client = KlaviyoClient(API_KEY, api_url=url, timeout=(1.0, 0.2))
        with pytest.raises(KlaviyoError) as caught:
            client.create_event({})
        assert caught.value.transient and "in time" in str(caught.value)
        client.close()

    def test_refused_connection_is_transient(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        client = KlaviyoClient(API_KEY, api_url=f"http://127.0.0.1:{port}")
        with pytest.raises(KlaviyoError) as caught:
            client.create_event({})
        assert caught.value.transient
        assert API_KEY not in str(caught.value)
        client.close()

    def test_middleware_answers_503_when_klaviyo_times_out(self, make_app, loopback):
        url, behaviour = loopback
        behaviour["delay"] = 2.0
        app = make_app(api_url=url, timeout=0.2)
        response = app.post(UPDATE, {"email": "a@example.com"},
                            headers={"Accept": "application/json"}, status=503)
        assert response.json["success"] is False
        make_app.middleware.close()

    def test_one_session_per_thread(self):
        client = KlaviyoClient(API_KEY, api_url=API_URL)
        sessions: list[Any] = []
        thread = threading.Thread(target=lambda: sessions.append(client.session))
        thread.start()
        thread.join()
        assert sessions[0] is not client.session
        assert client.session is client.session
        assert API_KEY not in repr(client)
