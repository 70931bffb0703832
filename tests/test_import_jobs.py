"""Profile import jobs are followed to their end: Klaviyo processes them later and
reports refused profiles only on the job, so a 202 is not a delivery."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from klaviyo_middleware.delivery.courier import Courier
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.import_jobs import JobFollow, JobFollower, JobOutcome
from klaviyo_middleware.klaviyo.client import KlaviyoClient
from klaviyo_middleware.klaviyo.limits import ENDPOINT_LIMITS
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.progress import ImportJob, Progress
from klaviyo_middleware.model.submission import Submission

from support.factories import backlog, deliver_all, spooled
from support.klaviyo_fake import API_KEY, API_URL

ACCOUNT = account_fingerprint(API_URL, API_KEY)
QUICK = JobFollow(first_poll=0.05, max_poll=0.1)
JOBS = "/api/profile-bulk-import-jobs"


def test_a_profile_refused_inside_a_job_is_a_dead_letter_with_klaviyos_reason(
        tmp_path, klaviyo, caplog):
    items = backlog(26)
    refused = items[5]  # on two lists, with an event
    klaviyo.state.refuse(refused.profile["email"], "This email address is suppressed.")
    spool = spooled(tmp_path, items)
    with caplog.at_level(logging.ERROR, logger="klaviyo_middleware"):
        deliver_all(spool, batch=5)
    assert klaviyo.bodies(JOBS), "the backlog went through an import job"
    (letter,) = spool.dead_letters()
    assert letter.id == refused.id
    assert letter.error["detail"] == "This email address is suppressed."
    assert letter.error["code"] == "invalid"
    assert letter.error["pointer"].startswith("/data/attributes/profiles/data/")
    assert refused.id in caplog.text
    # The other 25 are in Klaviyo with their lists and events; the refused
    # person's later steps were never sent.
    assert set(klaviyo.profiles) == {item.profile["email"] for item in items} - {
        refused.profile["email"]}
    assert refused.event is not None and refused.event.unique_id not in klaviyo.events
    assert all(refused.profile["email"] not in people for people in klaviyo.subscribed.values())
    assert len(klaviyo.events) == sum(item.event is not None for item in items) - 1
    assert klaviyo.violations == []


def test_a_job_that_never_finishes_is_sent_again_one_call_per_profile(tmp_path, klaviyo,
                                                                      caplog):
    klaviyo.klaviyo.job_seconds = float("inf")
    items = backlog(12)
    spool = spooled(tmp_path, items)
    with caplog.at_level(logging.WARNING, logger="klaviyo_middleware"):
        deliver_all(spool, batch=5,
                    jobs=JobFollow(first_poll=0.05, max_poll=0.1, give_up_after=0.5))
    assert "unfinished after" in caplog.text
    assert spool.dead_letters() == []
    assert set(klaviyo.profiles) == {item.profile["email"] for item in items}
    singles = klaviyo.bodies("/api/profile-import")
    assert sorted(body["data"]["attributes"]["email"] for body in singles) == sorted(
        item.profile["email"] for item in items)
    # Lists without consent went through single calls too (the job's list
    # relationship never applied).
    assert klaviyo.members["C3"] == {item.profile["email"] for item in items
                                     if item.lists == ["C3"]}


def test_a_sender_stopped_while_following_leaves_the_job_to_the_next(tmp_path, klaviyo):
    klaviyo.klaviyo.job_seconds = float("inf")
    items = backlog(10)
    spool = spooled(tmp_path, items)
    owner = "first"
    spool.register_sender(owner)
    claimed = spool.claim(owner, 100, 30.0)
    stopping = threading.Event()
    courier = Courier(spool, KlaviyoClient(API_KEY, api_url=API_URL), owner,
                      limits=dict(ENDPOINT_LIMITS), retry=RetryPolicy(), lease=30.0,
                      max_age=3600.0, stopping=stopping, jobs=QUICK)
    running = threading.Thread(target=courier.deliver_bulk, args=(claimed,))
    running.start()
    deadline = time.monotonic() + 10
    while len(klaviyo.bodies(JOBS + "/.+")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stopping.set()
    running.join(10)
    assert not running.is_alive()
    spool.unregister_sender(owner)
    # What the spool holds names the job; nothing was delivered yet.
    assert spool.outstanding() == 10
    started = len(klaviyo.bodies(JOBS))
    assert started == len(klaviyo.state.jobs) >= 1
    assert klaviyo.profiles == {}
    for job in klaviyo.state.jobs.values():
        job["due"] = 0.0  # Klaviyo gets to them at last
    deliver_all(spool, batch=5)
    assert len(klaviyo.bodies(JOBS)) == started, "the jobs were followed, not sent again"
    assert klaviyo.bodies("/api/profile-import") == []
    assert set(klaviyo.profiles) == {item.profile["email"] for item in items}


def _member(index: int, email: str) -> Leased:
    return Leased(Submission(action="identify", profile={"email": email}),
                  Progress(job=ImportJob("J1", index, time.time())), 0, time.time())


def _decide(members: list[Leased], failed: int, errors: list[dict[str, Any]]) -> JobOutcome:
    follower = JobFollower(KlaviyoClient(API_KEY, api_url=API_URL), JobFollow(),
                           lambda items, endpoint: True, lambda items, wait: set(),
                           lambda error: None, threading.Event())
    outcome = JobOutcome()
    follower._decide("J1", members, failed, errors, outcome)
    return outcome


def test_an_import_error_without_a_pointer_is_matched_by_the_profile_it_quotes():
    members = [_member(0, "a@example.com"), _member(1, "b@example.com")]
    outcome = _decide(members, 1, [{"code": "invalid", "detail": "No.", "source": {},
                                    "original_payload": {"email": "b@example.com"}}])
    assert [item.submission.profile["email"] for item in outcome.imported] == ["a@example.com"]
    assert [(item.submission.profile["email"], error.detail)
            for item, error in outcome.refused] == [("b@example.com", "No.")]


def test_failures_klaviyo_counts_but_does_not_name_send_the_rest_again():
    members = [_member(0, "a@example.com"), _member(1, "b@example.com")]
    outcome = _decide(members, 1, [])
    assert outcome.imported == [] and outcome.refused == []
    assert outcome.unfinished == members
