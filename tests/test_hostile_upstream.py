"""An upstream that drips, redirects, answers too much or in odd shapes
(Klaviyo broken, or a proxy in front of it) costs a bounded delay and is
never taken for Klaviyo accepting a call (docs/delivery.md, "What upstream
cannot do")."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import responses

from klaviyo_middleware.delivery.import_jobs import JobFollow, JobFollower
from klaviyo_middleware.klaviyo.client import KlaviyoClient, KlaviyoError
from klaviyo_middleware.klaviyo.transport import MAX_ANSWER_BYTES
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.progress import ImportJob, Progress

from support.factories import submission
from support.hostile import HostileUpstream, drip, first, forward, huge, json_answer
from support.klaviyo_fake import API_KEY

EVENT = {"data": {"type": "event", "attributes": {}}}


@pytest.fixture
def upstream() -> Iterator[HostileUpstream]:
    with HostileUpstream() as server:
        yield server


def client_for(upstream: HostileUpstream, timeout: tuple[float, float] = (1.0, 1.0)
               ) -> KlaviyoClient:
    return KlaviyoClient(API_KEY, api_url=upstream.url, timeout=timeout)


@pytest.mark.parametrize("in_headers", [False, True], ids=["body", "headers"])
def test_a_drip_ends_at_the_calls_deadline(upstream, in_headers):
    """A byte every 0.2 s never trips a 1 s read timeout; the call's own
    deadline (connect + read) ends it, as a transient failure."""
    upstream.behaviours["/api/events"] = drip(upstream, every=0.2, in_headers=in_headers)
    with pytest.raises(KlaviyoError) as failed:
        client_for(upstream).create_event(EVENT)
    assert failed.value.transient
    assert "in time" in str(failed.value)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_nor_success(upstream, status):
    upstream.behaviours["/api/events"] = json_answer(
        status, b"", {"Location": upstream.url + "/elsewhere"})
    upstream.behaviours["/elsewhere"] = json_answer(200, b'{"data": {"id": "x"}}')
    with pytest.raises(KlaviyoError) as failed:
        client_for(upstream).create_event(EVENT)
    assert failed.value.status == status and failed.value.transient
    assert "redirect" in str(failed.value)
    # Neither the key nor the visitor's data went anywhere else.
    assert upstream.paths() == ["/api/events"]


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_an_answer_longer_than_klaviyo_ever_sends_is_a_failure(upstream, chunked):
    upstream.behaviours["/api/profile-import"] = huge(64 * 1024 * 1024, chunked=chunked)
    with pytest.raises(KlaviyoError) as failed:
        client_for(upstream, timeout=(5.0, 30.0)).import_profile(
            {"data": {"type": "profile", "attributes": {"email": "a@example.com"}}})
    assert failed.value.transient
    assert f"{MAX_ANSWER_BYTES // 1024} KiB" in str(failed.value)


@pytest.mark.parametrize("evil", [
    "https://a.klaviyo.com.evil.example/api/profile-bulk-import-jobs/J/import-errors",
    "https://a.klaviyo.com@evil.example/api/x",
    "https://a.klaviyo.com:8443/api/x",
    "http://a.klaviyo.com/api/x",
    "https://evil.example/https://a.klaviyo.com/api/x",
    "https://a.klaviyo.com:notaport/api/x",
])
def test_the_key_goes_to_klaviyos_origin_alone(evil):
    client = KlaviyoClient(API_KEY, api_url="https://a.klaviyo.com")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, "https://a.klaviyo.com/api/profile-bulk-import-jobs/J/"
                 "import-errors", json={"data": [], "links": {"next": evil}})
        assert client.import_errors("J") == []
        assert [call.request.url.split("?")[0] for call in mock.calls] == [
            "https://a.klaviyo.com/api/profile-bulk-import-jobs/J/import-errors"]


def test_klaviyos_own_next_page_is_followed():
    client = KlaviyoClient(API_KEY, api_url="https://a.klaviyo.com")
    base = "https://a.klaviyo.com/api/profile-bulk-import-jobs/J/import-errors"
    with responses.RequestsMock() as mock:
        mock.add(responses.GET, base, json={
            "data": [{"attributes": {"code": "a"}}],
            "links": {"next": "https://a.klaviyo.com:443/api/profile-bulk-import-jobs/J/"
                              "import-errors?page%5Bcursor%5D=2"}})
        mock.add(responses.GET, base, json={"data": [{"attributes": {"code": "b"}}],
                                            "links": {"next": None}})
        assert [error["code"] for error in client.import_errors("J")] == ["a", "b"]


def test_a_next_page_that_loops_is_not_followed_for_ever():
    client = KlaviyoClient(API_KEY, api_url="https://a.klaviyo.com")
    base = "https://a.klaviyo.com/api/profile-bulk-import-jobs/J/import-errors"
    with responses.RequestsMock() as mock:
        for page in range(2):
            mock.add(responses.GET, base, json={
                "data": [], "links": {"next": f"{base}?page%5Bcursor%5D={page % 2}"}})
        mock.add(responses.GET, base, json={
            "data": [], "links": {"next": f"{base}?page%5Bcursor%5D=0"}})
        with pytest.raises(KlaviyoError, match="did not end") as failed:
            client.import_errors("J")
        assert failed.value.transient
        assert len(mock.calls) == 3


def job_answer(**attributes: object) -> bytes:
    return json.dumps({"data": {"type": "profile-bulk-import-job", "id": "J",
                                "attributes": {"status": "complete", **attributes},
                                "links": None}}).encode()


@pytest.mark.parametrize("attributes, errors", [
    ({"failed_count": "many"}, None),  # a count that is not a number
    ({"failed_count": -1}, None),
    ({"failed_count": 1}, b'{"data": [{"attributes": {"source": "profiles/0"}}], "links": null}'),
    ({"failed_count": 1}, b'{"data": "nothing", "links": {"next": 7}}'),
])
def test_an_odd_job_answer_fails_that_job_alone(upstream, attributes, errors):
    """An answer Klaviyo never sends is read as a failure of the job, asked
    again, and in the end its profiles are sent one call each: never an
    exception that aborts the round (and leaves its leases to expire)."""
    upstream.behaviours["/api/profile-bulk-import-jobs/J"] = json_answer(
        200, job_answer(**attributes))
    if errors is not None:
        upstream.behaviours["/api/profile-bulk-import-jobs/J/import-errors"] = json_answer(
            200, errors)
    member = Leased(submission(1), Progress(job=ImportJob("J", 0, 0.0)), 0, 0.0)
    follower = JobFollower(client_for(upstream), JobFollow(first_poll=0.0, max_poll=0.01,
                                                           give_up_after=0.3),
                           lambda items, endpoint: True,
                           lambda items, seconds: {item.submission.id for item in items},
                           lambda error: None, threading.Event())
    outcome = follower.follow([member])
    if attributes.get("failed_count") == 1 and errors and b"profiles/0" in errors:
        # A source that is a string blames nobody: the profile goes again alone.
        assert outcome.unfinished == [member] and outcome.refused == []
    else:
        assert outcome.unfinished == [member]
    assert outcome.imported == []


@pytest.mark.parametrize(("path", "status", "call"), [
    ("/api/events", 200, lambda client: client.create_event(EVENT)),
    ("/api/lists/L1/relationships/profiles", 200,
     lambda client: client.add_to_list("L1", {"data": []})),
    ("/api/profile-subscription-bulk-create-jobs", 204, lambda client: client.subscribe({})),
])
def test_a_success_klaviyo_never_answers_is_not_taken_for_one(upstream, path, status, call):
    """A captive portal's or a proxy's 200 page where Klaviyo answers 202
    (or 204): not delivered, asked again later."""
    upstream.behaviours[path] = json_answer(status, b"<html>Welcome</html>")
    with pytest.raises(KlaviyoError) as failed:
        call(client_for(upstream))
    assert failed.value.transient and failed.value.status == status


UPDATE = "/klaviyoConnect/api/updateProfile"
PATHS = ("/api/profile-import", "/api/profile-subscription-bulk-create-jobs", "/api/events",
         "/api/event-bulk-create-jobs", "/api/profile-bulk-import-jobs")


def dripping_then_klaviyo(upstream: HostileUpstream, klaviyo_url: str, drips: int) -> None:
    """Every path of delivery drips for its first ``drips`` calls, then is
    Klaviyo (the fake, behind this upstream)."""
    for path in PATHS:
        upstream.behaviours[path] = first(drips, drip(upstream, every=0.2, most=120),
                                          forward(klaviyo_url))


def test_a_drip_delays_the_spool_and_loses_nothing(upstream, loopback_klaviyo, tmp_path):
    """Every sender thread meets a drip; each call ends at its deadline, and
    everything accepted reaches Klaviyo once the upstream heals."""
    from webtest import TestApp

    from klaviyo_middleware import KlaviyoMiddleware

    dripping_then_klaviyo(upstream, loopback_klaviyo.url, drips=1)
    middleware = KlaviyoMiddleware(lambda environ, start: [], api_key=API_KEY,
                                   api_url=upstream.url, timeout=(1.0, 1.0),
                                   spool_path=str(tmp_path / "spool.sqlite3"))
    try:
        app = TestApp(middleware)
        for number in range(4):
            app.post(UPDATE, {"email": f"d{number}@example.com", "list": "L1",
                              "event[name]": "Joined", "event[event_id]": f"d-{number}"})
        assert middleware.flush(120), middleware.delivery.spool.outstanding()
    finally:
        middleware.close()
    assert {f"d-{number}" for number in range(4)} <= set(loopback_klaviyo.fake.events)
    assert middleware.delivery.spool.dead_letters() == []
