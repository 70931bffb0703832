"""Spool delivery: the visitor never waits, retries, dead letters, the shared pause."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from requests import ConnectionError as RequestsConnectionError

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.model.submission import Submission

from support.factories import FAST, HookRecorder, spool_delivery, submission
from support.waiting import wait_for

UPDATE = "/klaviyoConnect/api/updateProfile"
JSON = {"Accept": "application/json"}


@pytest.fixture
def observed() -> HookRecorder:
    return HookRecorder()


@pytest.fixture
def delivery(tmp_path, observed, klaviyo):
    backend = spool_delivery(tmp_path, hooks=observed.hooks, sender_threads=2)
    yield backend
    backend.close()


class TestThroughTheMiddleware:
    def test_answer_comes_before_delivery(self, make_app, klaviyo):
        gate = threading.Event()
        klaviyo_latency = klaviyo.handle

        def slow(*args: Any) -> Any:
            gate.wait(10)
            return klaviyo_latency(*args)

        klaviyo.handle = slow  # type: ignore[method-assign]
        app = make_app(delivery="spool")
        response = app.post(UPDATE, {"email": "a@example.com", "list": "L1"}, headers=JSON)
        assert response.json["queued"] is True and response.json["delivered"] is False
        assert klaviyo.paths() == []
        gate.set()
        assert make_app.middleware.flush(10)
        assert klaviyo.paths() == ["/api/profile-import",
                                   "/api/profile-subscription-bulk-create-jobs"]

    def test_klaviyo_down_still_accepts_and_keeps(self, make_app, klaviyo):
        klaviyo.fail("/api/.*", exception=RequestsConnectionError("down"), times=100)
        app = make_app(delivery="spool")
        response = app.post(UPDATE, {"email": "a@example.com"}, headers=JSON)
        assert response.json["success"] is True
        assert make_app.middleware.flush(0.3) is False
        assert make_app.middleware.delivery.spool.outstanding() == 1

    def test_full_spool_is_503_with_retry_after(self, make_app, klaviyo):
        app = make_app(delivery="spool", spool_max_size=1)
        response = app.post(UPDATE, {"email": "a@example.com"}, headers=JSON, status=503)
        assert response.headers["Retry-After"] == "60"
        assert response.json["success"] is False

    def test_unwritable_spool_fails_at_start_up(self, make_app, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        from klaviyo_middleware import ConfigurationError
        with pytest.raises(ConfigurationError, match="spool"):
            make_app(delivery="spool", spool_path=str(blocker / "spool.sqlite3"))


def test_every_step_once(delivery, klaviyo, observed):
    # One at a time: each is alone when its round starts, so it goes one
    # call a step (together they would go in bulk, test_batching.py).
    items = [submission(number) for number in range(5)]
    for item in items:
        assert delivery.submit(item).queued
        assert delivery.flush(10)
    assert sorted(observed.delivered_ids) == sorted(item.id for item in items)
    assert klaviyo.paths().count("/api/profile-import") == 5
    assert klaviyo.paths().count("/api/profile-subscription-bulk-create-jobs") == 5
    assert sorted(klaviyo.events) == [f"u-{number}" for number in range(5)]


def test_transient_failures_are_retried_without_repeating_steps(delivery, klaviyo, observed):
    klaviyo.fail("/api/events", 503, times=2)
    delivery.submit(submission())
    assert delivery.flush(10)
    assert klaviyo.paths().count("/api/profile-subscription-bulk-create-jobs") == 1
    assert klaviyo.paths().count("/api/events") == 3
    assert [status for status, _ in observed.retries] == [503, 503]
    assert all(0 <= delay <= FAST.retry_cap for _, delay in observed.retries)


def test_permanent_failure_goes_to_dead_letters_with_klaviyos_error(delivery, klaviyo, observed):
    klaviyo.fail("/api/profile-subscription-bulk-create-jobs", 404)
    item = submission()
    delivery.submit(item)
    assert delivery.flush(10)
    [dead] = delivery.spool.dead_letters()
    assert dead.submission.id == item.id
    assert dead.error["status"] == 404 and dead.error["detail"] == "Scripted failure 404."
    assert dead.progress.done == ["profile"]
    assert observed.dead_ids == [item.id]
    assert "/api/events" not in klaviyo.paths()


def test_429_pauses_the_whole_account_for_retry_after(delivery, klaviyo, observed):
    klaviyo.fail("/api/profile-import", 429, headers={"Retry-After": "1"})
    delivery.submit(submission(lists=[], event=None))
    assert delivery.flush(10)
    first, second = klaviyo.times("/api/profile-import")
    assert second - first >= 1.0
    assert observed.retries == [(429, 1.0)]


def test_too_old_goes_to_dead_letters(tmp_path, klaviyo, observed):
    klaviyo.fail("/api/profile-import", 500, times=50)
    backend = spool_delivery(tmp_path, hooks=observed.hooks, retry_max_age=0.2)
    spool = backend.spool
    try:
        backend.submit(submission())
        assert backend.flush(10)
    finally:
        backend.close()
    [dead] = spool.dead_letters()
    assert dead.error["status"] == 500 and dead.attempts >= 2


def test_delivery_resumes_after_close_in_a_new_sender(tmp_path, klaviyo, observed):
    klaviyo.fail("/api/.*", exception=RequestsConnectionError("down"), times=1000)
    first = spool_delivery(tmp_path)
    first.submit(submission())
    first.close()
    klaviyo._script.clear()
    second = spool_delivery(tmp_path, hooks=observed.hooks)
    try:
        assert second.flush(10)
    finally:
        second.close()
    assert len(observed.delivered) == 1 and "u-0" in klaviyo.events


def test_rate_limits_hold_across_threads(tmp_path, klaviyo, monkeypatch):
    # add-to-list allows 10 calls a second; at a share of 0.3 that is 3.
    backend = spool_delivery(tmp_path, sender_threads=4, rate_limit_share=0.3, batching=False)
    # The slots as the limiter granted them, on its own clock: when each call
    # then reaches the fake depends on how loaded the machine is.
    granted: list[float] = []
    take_rate_slot = backend.spool.take_rate_slot

    def recorded(endpoint: str, limits: Any, now: float | None = None) -> float:
        now = time.time() if now is None else now
        wait = take_rate_slot(endpoint, limits, now)
        if wait == 0 and endpoint == "add-to-list":
            granted.append(now)
        return wait

    monkeypatch.setattr(backend.spool, "take_rate_slot", recorded)
    try:
        for number in range(9):
            backend.submit(submission(number, confirm_opt_in=False, event=None))
        assert backend.flush(30)
    finally:
        backend.close()
    # Every call had its slot, and everyone was added once (the leases of
    # those waiting their turn are kept meanwhile: nobody else sends them).
    assert len(klaviyo.times(r"/api/lists/L1/relationships/profiles")) == len(granted) == 9
    assert len(klaviyo.members["L1"]) == 9
    # In the limiter's own time order (threads take their clock readings
    # before they wait for the spool's lock).
    granted.sort()
    for index in range(len(granted) - 3):
        assert granted[index + 3] - granted[index] >= 1.0


def test_an_observer_that_raises_does_not_stop_delivery(tmp_path, klaviyo):
    def explode(_: Submission) -> None:
        raise RuntimeError("observer bug")

    backend = spool_delivery(tmp_path, hooks=Hooks(on_delivered=explode))
    try:
        for number in range(3):
            backend.submit(submission(number))
        assert backend.flush(10)
    finally:
        backend.close()
    assert len(klaviyo.events) == 3


def test_timeouts_and_slow_answers_over_real_http(make_app, loopback_klaviyo):
    """Klaviyo too slow to answer within the timeout: retried until it recovers."""
    fake = loopback_klaviyo.fake
    fake.latency = 0.6
    retried: list[str] = []
    app = make_app(delivery="spool", api_url=loopback_klaviyo.url, timeout=0.2,
                   on_retry=lambda sub, error, delay: retried.append(str(error)))
    response = app.post(UPDATE, {"email": "slow@example.com", "list": "L1",
                                 "event[name]": "Joined"}, headers=JSON)
    assert response.json["queued"] is True
    wait_for(lambda: retried, timeout=20)
    assert "in time" in retried[0]
    fake.latency = 0.0
    assert make_app.middleware.flush(30)
    assert set(fake.profiles) == {"slow@example.com"}
    assert fake.subscribed == {"L1": {"slow@example.com"}}
    assert len(fake.events) == 1


def test_after_an_outage_everything_goes_out_at_once(make_app, klaviyo):
    """Klaviyo away for ~8 s while posts arrive: one probe an interval
    finds it back, and everything put off is due at once (it used to wait
    out each submission's own backoff, for minutes)."""
    from klaviyo_middleware.delivery.courier import PROBE_INTERVAL

    klaviyo.fail("/api/.*", exception=RequestsConnectionError("down"), times=1_000_000)
    app = make_app(delivery="spool")
    middleware = make_app.middleware
    down_until = time.monotonic() + 8
    number = 0
    while time.monotonic() < down_until:
        app.post(UPDATE, {"email": f"p{number}@example.com", "list": "L1",
                          "event[name]": "Joined"}, headers=JSON)
        number += 1
        time.sleep(0.1)
    calls_while_down = len(klaviyo.calls)
    klaviyo._script.clear()
    # A bound on liveness, not a speed measurement: one probe interval, then
    # one bulk round; each submission's own backoff would be far longer.
    # A loaded machine may take longer; the failure this catches takes minutes.
    assert middleware.flush(PROBE_INTERVAL + 30), middleware.delivery.spool.outstanding()
    assert len(klaviyo.events) == number
    # While down, Klaviyo saw about one probe an interval, not a storm.
    assert calls_while_down <= 3 * (8 / PROBE_INTERVAL + 2) + number // 10, calls_while_down
