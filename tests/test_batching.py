"""Under backlog the bulk endpoints carry the work, with the same result in Klaviyo."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
import responses

from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.klaviyo import bulk
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Event, Submission

from support.factories import backlog, deliver_all, spool_delivery, spooled, submissions
from support.klaviyo_fake import API_KEY, API_URL, MockedKlaviyo
from support.klaviyo_state import state, subscriptions_sent
from support.waiting import wait_for

ACCOUNT = account_fingerprint(API_URL, API_KEY)


def drain(tmp_path, fake: MockedKlaviyo, items: list[Submission], **options: Any) -> Spool:
    """Deliver ``items`` from a spool of their own, five a lease."""
    name = f"{options.get('batching', True)}.sqlite3"
    return deliver_all(spooled(tmp_path, items, name), batch=5, **options)


def test_bulk_gives_the_same_klaviyo_as_single_calls(tmp_path, klaviyo):
    items = backlog(240)
    drain(tmp_path, klaviyo, items, batching=True)
    bulk_state, bulk_calls = state(klaviyo), Counter(klaviyo.paths())
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        singles = MockedKlaviyo(mock)
        drain(tmp_path, singles, items, batching=False)
    assert singles.violations == []
    assert bulk_state == state(singles)
    assert len(bulk_state["events"]) == 180 and len(bulk_state["profiles"]) == 240
    single_calls = Counter(singles.paths())
    assert sum(single_calls.values()) == 240 + 60 + 120 + 60 + 180
    # A bulk round makes one import job per set of lists, one subscribe job
    # per list and one events job; each delivery thread may run a round.
    assert bulk_calls["/api/profile-bulk-import-jobs"] >= 1
    assert bulk_calls["/api/event-bulk-create-jobs"] >= 1
    assert sum(bulk_calls.values()) <= 30 < sum(single_calls.values())


def test_a_submission_alone_goes_one_call_a_step(tmp_path, klaviyo):
    delivery = spool_delivery(tmp_path, round_interval=0.05)
    try:
        for item in backlog(3):
            delivery.submit(item)
            assert delivery.flush(10)
    finally:
        delivery.close()
    assert "/api/profile-bulk-import-jobs" not in klaviyo.paths()
    assert "/api/event-bulk-create-jobs" not in klaviyo.paths()
    assert klaviyo.paths().count("/api/profile-import") == 3
    assert len(klaviyo.events) == 3


def test_two_due_together_go_in_bulk(tmp_path, klaviyo):
    drain(tmp_path, klaviyo, backlog(2))
    assert klaviyo.paths().count("/api/profile-bulk-import-jobs") == 1
    assert klaviyo.paths().count("/api/event-bulk-create-jobs") == 1
    assert "/api/profile-import" not in klaviyo.paths()
    assert len(klaviyo.events) == 2


def test_rounds_keep_their_cadence(tmp_path, klaviyo, monkeypatch):
    """Posts arriving faster than the cadence share rounds: at most one
    round starts an interval, and each takes all that is due."""
    delivery = spool_delivery(tmp_path, sender_threads=4, round_interval=0.5)
    # The rounds as the spool granted them, on its own clock (when a call
    # reaches the fake depends on how loaded the machine is).
    granted: list[float] = []
    claim_turn = delivery.spool.claim_turn

    def recorded(task: str, every: float, now: float) -> bool:
        taken = claim_turn(task, every, now)
        if taken and task == "round":
            granted.append(now)
        return taken

    monkeypatch.setattr(delivery.spool, "claim_turn", recorded)
    items = submissions(40, lists=["A1"])
    try:
        for item in items:
            delivery.submit(item)
            time.sleep(0.05)
        assert delivery.flush(30)
    finally:
        delivery.close()
    calls = klaviyo.paths().count("/api/event-bulk-create-jobs") + \
        klaviyo.paths().count("/api/events")
    # 40 posts over two seconds or more: rounds, never one per post.
    assert 0 < calls <= len(granted) <= len(items) // 4
    assert all(later - earlier >= 0.5 for earlier, later in itertools.pairwise(granted))
    assert len(klaviyo.events) == 40


@pytest.mark.parametrize(("gather", "rounds"), [(0.6, 1), (0.0, 2)])
def test_a_round_gathers_what_other_processes_move_as_it_starts(
        tmp_path, klaviyo, monkeypatch, gather, rounds):
    """As the turn frees, every process's sender wakes; the one that takes
    it waits ``round_gather`` before it claims, so what the others move in
    at that moment goes in this round, not the next."""
    path = tmp_path / "shared.sqlite3"
    other_process = Spool(path, ACCOUNT)  # its own intake; its sender is not running
    late, first = submissions(2)
    other_process.enqueue(late)
    delivery = spool_delivery(Spool(path, ACCOUNT), round_gather=gather, round_interval=0.5)
    take_turn = delivery.spool.claim_turn

    def taken_and_the_other_moves(*args: Any) -> bool:
        taken = take_turn(*args)
        if taken:
            threading.Timer(0.2, other_process.move_intake).start()
        return taken

    monkeypatch.setattr(delivery.spool, "claim_turn", taken_and_the_other_moves)
    try:
        delivery.submit(first)
        wait_for(lambda: {"u-0", "u-1"} <= set(klaviyo.events), timeout=10)
    finally:
        delivery.close()
        other_process.close()
    singles = klaviyo.paths().count("/api/events")
    in_bulk = klaviyo.paths().count("/api/event-bulk-create-jobs")
    assert (singles, in_bulk) == ((0, 1) if rounds == 1 else (2, 0))


def test_a_profile_that_only_names_the_person_needs_no_import_in_bulk(tmp_path, klaviyo):
    """A newsletter form's email: the round's subscription or event creates
    the person, with the same result in Klaviyo as the single calls."""
    items = [Submission(action="updateProfile", profile=profile, lists=lists,
                        event=Event(name="Joined", unique_id=f"n-{n}") if n % 2 else None)
             for n, (profile, lists) in enumerate(
                 [({"email": f"n{n}@example.com"}, ["A1"]) for n in range(6)]
                 + [({"email": "sms@example.com", "phone_number": "+15005550006"}, ["A1"]),
                    ({"email": "x@example.com", "external_id": "x-1"}, ["A1"])])]
    drain(tmp_path, klaviyo, items)
    bulk_state = state(klaviyo)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        singles = MockedKlaviyo(mock)
        drain(tmp_path, singles, items, batching=False)
    assert bulk_state == state(singles)
    imported = [profile["attributes"] for body in klaviyo.bodies("/api/profile-bulk-import-jobs")
                for profile in body["data"]["attributes"]["profiles"]["data"]]
    # Only those neither a subscription nor an event names whole.
    assert sorted(imported, key=str) == [
        {"email": "sms@example.com", "phone_number": "+15005550006"},
        {"email": "x@example.com", "external_id": "x-1"}]


def test_a_refused_bulk_job_falls_back_to_single_calls(tmp_path, klaviyo):
    klaviyo.fail("/api/event-bulk-create-jobs", 400)
    klaviyo.fail("/api/events", 400)  # the one submission Klaviyo really refuses
    spool = drain(tmp_path, klaviyo, backlog(40))
    assert len(spool.dead_letters()) == 1
    assert len(klaviyo.events) == 30 - 1
    # The refused job did not make anyone subscribe twice.
    assert set(subscriptions_sent(klaviyo).values()) == {1}


def test_a_transient_bulk_failure_retries_only_what_is_left(tmp_path, klaviyo):
    klaviyo.fail("/api/event-bulk-create-jobs", 503)
    drain(tmp_path, klaviyo, backlog(40))
    assert len(klaviyo.events) == 30
    assert set(subscriptions_sent(klaviyo).values()) == {1}
    imported = Counter(
        [profile["attributes"]["email"]
         for body in klaviyo.bodies("/api/profile-bulk-import-jobs")
         for profile in body["data"]["attributes"]["profiles"]["data"]]
        + [body["data"]["attributes"]["email"] for body in klaviyo.bodies("/api/profile-import")])
    # The failed events job did not send anyone's profile again.
    assert len(imported) == 40 and set(imported.values()) == {1}


def claimed(item: Submission) -> Leased:
    return Leased(item, Progress(), 0, 0.0)


def test_plan_groups_profiles_by_their_lists():
    calls = bulk.profile_imports([claimed(item) for item in backlog(8)])
    # People with no list to join without consent, and the people joining C3.
    steps = sorted(sorted({tuple(done) for _, done in call.members}) for call in calls)
    assert steps == [[("profile",)], [("profile", "add:C3")]]
    assert sorted(len(call.members) for call in calls) == [2, 6]


def test_chunks_respect_count_and_size(monkeypatch):
    monkeypatch.setattr(bulk, "MAX_BODY_BYTES", 10_000)
    big = [Submission(action="updateProfile", profile={"email": f"b{n}@example.com"},
                      event=Event(name="E", unique_id=f"u{n}", properties={"blob": "x" * 3000}))
           for n in range(10)]
    calls = bulk.events([claimed(item) for item in big])
    assert len(calls) == 4  # three 3 KB events fit in 10 KB
    many = [Submission(action="updateProfile", profile={"email": f"m{n}@example.com"},
                       event=Event(name="E", unique_id=f"m{n}")) for n in range(2500)]
    monkeypatch.setattr(bulk, "MAX_BODY_BYTES", 4_500_000)
    sizes = [len(call.members) for call in bulk.events([claimed(item) for item in many])]
    assert sizes == [1000, 1000, 500]


@pytest.mark.parametrize("count", [1, 1000, 1001, 10_001])
def test_every_bulk_body_is_within_klaviyos_limits(count):
    items = [claimed(Submission(action="updateProfile", profile={"email": f"x{n}@example.com"},
                                lists=["L1"], event=Event(name="E", unique_id=f"x{n}")))
             for n in range(count)]
    class Recorder:
        def _post(self, path: str, body: dict[str, Any], expect: tuple[int, ...] = ()) -> Any:
            self.body = body
            return {"data": {"type": "job", "id": "J1"}}

    for call in bulk.plan(items):
        recorder = Recorder()
        call.send(recorder)  # type: ignore[arg-type]
        assert len(json.dumps(recorder.body)) < 5_000_000
        limit = 10_000 if call.endpoint == "profile-bulk-import" else 1000
        assert len(call.members) <= limit


def test_sms_sign_ups_in_a_backlog_reach_klaviyo_as_single_calls_would(tmp_path, klaviyo):
    """Phone-only subscribers go through the bulk jobs with SMS consent."""
    items = [Submission(action="updateProfile",
                        profile={"phone_number": f"+1415555{number:04d}"},
                        lists=["S1"], sms_consent=True) for number in range(30)]
    items += backlog(10)
    drain(tmp_path, klaviyo, items, batching=True)
    assert klaviyo.bodies("/api/profile-bulk-import-jobs")
    assert klaviyo.sms_subscribed == {"S1": {f"+1415555{n:04d}" for n in range(30)}}
    bulk_state = state(klaviyo)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        singles = MockedKlaviyo(mock)
        drain(tmp_path, singles, items, batching=False)
    assert singles.violations == []
    assert state(singles) == bulk_state and singles.sms_subscribed == klaviyo.sms_subscribed
