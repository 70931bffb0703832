"""A person's latest submission wins: profiles reach Klaviyo as if sent in the order
they were accepted, whatever order delivery happens in (docs/design.md,
"Per-person order")."""

from __future__ import annotations

import time

import pytest

from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.store import MARK_GRACE, Spool
from klaviyo_middleware.model import profile_order
from klaviyo_middleware.model.profile_order import still_ours
from klaviyo_middleware.model.submission import Submission

from spool_process import start
from support.factories import deliver_all, spooled
from support.klaviyo_fake import API_KEY, MockedKlaviyo
from support.waiting import wait_for

IDENTIFY = "/klaviyoConnect/api/identify"
PEOPLE, ROUNDS = 60, 3


def version(person: int, round_: int) -> dict[str, str]:
    return {"email": f"p{person}@example.com", "first_name": f"v{round_}"}


def first_names(fake: MockedKlaviyo) -> dict[str, str]:
    return {email: profile.get("first_name", "") for email, profile in fake.profiles.items()}


LAST = {f"p{person}@example.com": f"v{ROUNDS - 1}" for person in range(PEOPLE)}


@pytest.mark.parametrize("attempt", range(3))
def test_sixty_people_three_times_each_end_at_their_last_version(attempt, make_app, klaviyo):
    """The issue's own scenario: four sender threads, Klaviyo answering in
    0-30 ms in no particular order; each run a fresh race."""
    klaviyo.latency_range = (0.0, 0.03)
    app = make_app(delivery="spool", sender_threads=4)
    for person in range(PEOPLE):
        for round_ in range(ROUNDS):
            app.post(IDENTIFY, version(person, round_), status=200)
    assert make_app.middleware.flush(60)
    assert first_names(klaviyo) == LAST
    assert klaviyo.violations == []


@pytest.mark.parametrize("attempt", range(2))
def test_a_backlog_in_bulk_rounds_ends_at_each_persons_last_version(attempt, tmp_path, klaviyo):
    """All three versions wait in the spool together, so they go through
    bulk rounds and import jobs that Klaviyo processes later."""
    klaviyo.latency_range = (0.0, 0.03)
    items = [Submission(action="identify", profile=version(person, round_))
             for round_ in range(ROUNDS) for person in range(PEOPLE)]
    spool = spooled(tmp_path, items)
    deliver_all(spool, sender_threads=4, batch=10, bulk_size=50)
    assert "/api/profile-bulk-import-jobs" in klaviyo.paths()
    assert first_names(klaviyo) == LAST
    assert spool.dead_letters() == []


def test_an_older_submission_sent_late_keeps_only_what_is_still_its_own(tmp_path, klaviyo):
    """The first version fails and is retried after the later ones went in:
    it must not change the name back, and what only it says still arrives."""
    first = Submission(action="identify", profile={
        "email": "ann@example.com", "first_name": "Old", "properties": {"shoe": 38, "hat": "M"}})
    second = Submission(action="identify", profile={
        "email": "ann@example.com", "last_name": "Lee", "properties": {"hat": "L"}})
    third = Submission(action="identify", profile={"email": "ann@example.com",
                                                   "first_name": "New"})
    klaviyo.fail("/api/profile-import", 503)  # the first call: the first version
    spool = spooled(tmp_path, [first, second, third])
    deliver_all(spool, sender_threads=1, batch=1, batching=False)
    assert klaviyo.profiles["ann@example.com"] == {
        "email": "ann@example.com", "first_name": "New", "last_name": "Lee",
        "properties": {"shoe": 38, "hat": "L"}}
    sent = [body["data"]["attributes"] for body in klaviyo.bodies("/api/profile-import")]
    # Failed, then the two newer ones, then the first one again without the
    # name and the hat that newer ones had already sent.
    assert sent[-1] == {"email": "ann@example.com", "properties": {"shoe": 38}}


def test_one_person_is_sent_by_one_sender_at_a_time(tmp_path):
    """A claim never leases a submission while another one about the same
    person (by any identifier) is leased with its profile unsent."""
    spool = Spool(tmp_path / "spool.sqlite3", "acct")
    by_email = Submission(action="identify", profile={"email": "a@example.com",
                                                      "phone_number": "+14155550100"})
    by_phone = Submission(action="identify", profile={"phone_number": "+14155550100"})
    other = Submission(action="identify", profile={"email": "b@example.com"})
    for item in (by_email, by_phone, other):
        spool.enqueue(item)
    first = spool.claim("one", 1, 30.0)
    assert [item.submission.id for item in first] == [by_email.id]
    second = spool.claim("two", 10, 30.0)
    assert [item.submission.id for item in second] == [other.id]
    # Once the profile is in, the next submission about the person may go.
    first[0].progress.done.append("profile")
    assert spool.save_progress_many("one", first, 30.0) == {by_email.id}
    assert [item.submission.id for item in spool.claim("two", 10, 30.0)] == [by_phone.id]


def test_marks_are_kept_while_an_older_submission_waits_and_a_grace_after(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite3", "acct")
    old = Submission(action="identify", profile={"email": "a@example.com", "first_name": "A"})
    new = Submission(action="identify", profile={"email": "a@example.com", "first_name": "B"})
    spool.enqueue(old)
    spool.enqueue(new)
    # The newer one goes first (the older was handed back to wait).
    (claimed_old,) = spool.claim("one", 1, 30.0)
    spool.postpone("one", claimed_old, 10**10)
    (claimed_new,) = spool.claim("one", 1, 30.0)
    claimed_new.progress.done.append("profile")
    spool.save_progress_many("one", [claimed_new], 30.0)
    turns = spool.take_profile_turns("one", [claimed_old], 30.0)
    assert turns[old.id].marks == {"email": new.accepted_at, "first_name": new.accepted_at}
    assert spool.prune_marks() == 0  # the older one still waits
    # The older one's profile goes in too: nobody needs the marks any more.
    spool.complete_many("one", [claimed_new])
    (claimed_old,) = spool.claim("one", 1, 30.0, now=10**10 + 1)
    assert claimed_old.submission.id == old.id
    claimed_old.progress.done.append("profile")
    spool.save_progress_many("one", [claimed_old], 30.0, now=10**10 + 1)
    # Kept a while: a still older one may be in another process's intake.
    assert spool.prune_marks() == 0
    assert spool.prune_marks(now=time.time() + MARK_GRACE + 1) == 2


def test_an_older_submission_still_in_another_process_intake_gives_way(tmp_path):
    """Process A accepted first but moves late; B's newer submission about
    the same person is delivered meanwhile. A's must not write B's values back."""
    path = tmp_path / "spool.sqlite3"
    first, second = Spool(path, "acct"), Spool(path, "acct")
    old = Submission(action="identify", profile={"email": "a@example.com", "first_name": "A",
                                                 "last_name": "Only-A"})
    new = Submission(action="identify", profile={"email": "A@example.com", "first_name": "B"})
    first.enqueue(old)
    second.enqueue(new)
    (claimed_new,) = second.claim("b", 10, 30.0)
    assert claimed_new.submission.id == new.id  # A's is still in A's intake
    claimed_new.progress.done.append("profile")
    second.complete_many("b", [claimed_new])
    (claimed_old,) = first.claim("a", 10, 30.0)
    turns = first.take_profile_turns("a", [claimed_old], 30.0)
    assert still_ours(old.profile, turns[old.id].marks, old.accepted_at) == {
        "email": "a@example.com", "last_name": "Only-A"}


class TestInRound:
    def test_an_attribute_two_submissions_set_is_sent_by_the_newer_only(self):
        old = Submission(action="identify", profile={
            "email": "a@example.com", "phone_number": "+14155550100", "first_name": "A",
            "location": {"city": "Oslo", "zip": "0150"}})
        new = Submission(action="identify", profile={
            "email": "a@example.com", "first_name": "B", "location": {"city": "Bergen"}})
        allowed = profile_order.order_in_round([(old, {}), (new, {})])
        assert allowed[new.id] == new.profile
        assert allowed[old.id] == {"email": "a@example.com", "phone_number": "+14155550100",
                                   "location": {"zip": "0150"}}

    def test_the_anchor_identifier_always_stays(self):
        old = Submission(action="identify", profile={"phone_number": "+14155550100",
                                                     "external_id": "X1"})
        marks = {"phone_number": old.accepted_at + 5, "external_id": old.accepted_at + 5}
        assert profile_order.still_ours(old.profile, marks, old.accepted_at) == {
            "phone_number": "+14155550100"}

    def test_people_are_the_same_by_any_identifier_and_email_in_any_case(self):
        a = Submission(action="identify", profile={"email": "A@Example.com"})
        b = Submission(action="identify", profile={"email": "a@example.com",
                                                   "external_id": "7"})
        assert set(a.person_keys()) < set(b.person_keys())
        assert profile_order.person_hashes("x", a.profile)[0] in \
            profile_order.person_hashes("x", b.profile)
        assert profile_order.person_hashes("x", a.profile) != \
            profile_order.person_hashes("y", a.profile)
        assert "example" not in "".join(profile_order.person_hashes("x", b.profile))


@pytest.mark.parametrize("attempt", range(2))
def test_three_processes_on_one_spool_end_at_each_persons_last_version(
        attempt, tmp_path, loopback_klaviyo):
    fake = loopback_klaviyo.fake
    fake.latency_range = (0.0, 0.03)
    path = tmp_path / "shared.sqlite3"
    spool = Spool(path, account_fingerprint(loopback_klaviyo.url, API_KEY))
    senders = [start("deliver", path, loopback_klaviyo.url) for _ in range(3)]
    try:
        for round_ in range(ROUNDS):
            for person in range(PEOPLE):
                spool.enqueue(Submission(action="identify", profile=version(person, round_)))
            # No sender here: hand what this process accepted to the others.
            spool.move_intake()
        wait_for(lambda: spool.outstanding() == 0, timeout=90)
    finally:
        for sender in senders:
            sender.kill()
            sender.wait()
            assert sender.stdout is not None
            sender.stdout.close()
    assert first_names(fake) == LAST
    assert fake.violations == []
