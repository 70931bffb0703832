"""The Redis pool that Celery workers drain through the bulk endpoints (real Redis)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import responses

from klaviyo_middleware.delivery.celery.pool import RedisPool
from klaviyo_middleware.delivery.celery.state import RedisState
from klaviyo_middleware.delivery.courier import Courier, Postponed
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.klaviyo.client import KlaviyoClient
from klaviyo_middleware.klaviyo.limits import ENDPOINT_LIMITS
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission

from support.factories import backlog, identify
from support.klaviyo_fake import API_KEY, API_URL, MockedKlaviyo
from support.klaviyo_state import state, subscriptions_sent
from support.services import REDIS, require_redis

require_redis()

import redis  # noqa: E402


@pytest.fixture
def pool() -> Iterator[RedisPool]:
    connection = redis.Redis.from_url(REDIS)
    connection.flushdb()
    yield RedisPool(RedisState(REDIS, account_fingerprint(API_URL, API_KEY)))
    connection.flushdb()
    connection.close()


def fill(pool: RedisPool, count: int) -> list[Submission]:
    items = [identify(f"r{number}@example.com") for number in range(count)]
    for number, item in enumerate(items):
        assert pool.add(item, Progress(), 0, created_at=1000.0 + number)
    return items


class TestLeases:
    def test_adding_is_idempotent(self, pool):
        item = identify("r1@example.com")
        assert pool.add(item, Progress(done=["profile"]), 2, time.time())
        assert not pool.add(item, Progress(), 0, time.time())
        assert pool.holds(item.id) and pool.size() == 1
        [claimed] = pool.claim("a", 10, 60)
        assert claimed.progress.done == ["profile"] and claimed.attempts == 2

    def test_adding_takes_over_single_task_progress(self, pool):
        item = identify("r1@example.com")
        pool.state.save_progress(item.id, Progress(done=["profile"]))
        pool.add(item, Progress(done=["profile"]), 0, time.time())
        assert pool.state.load_progress(item.id).done == []

    def test_a_lease_is_exclusive_until_it_runs_out(self, pool):
        fill(pool, 3)
        first = pool.claim("a", 2, 0.3)
        assert [item.created_at for item in first] == [1000.0, 1001.0]
        assert len(pool.claim("b", 10, 0.3)) == 1
        assert pool.claim("c", 10, 0.3) == []
        time.sleep(0.35)
        # The owner died without a word: its submissions are claimable again.
        assert len(pool.claim("c", 10, 60)) == 3

    def test_a_lost_lease_cannot_overwrite_the_new_owner(self, pool):
        fill(pool, 2)
        held = pool.claim("a", 2, 0.2)
        time.sleep(0.25)
        taken = pool.claim("b", 1, 60)
        for item in held:
            item.progress.done.append("profile")
        # Both of a's leases ran out (one was taken over): its progress is refused.
        assert pool.save_progress_many("a", held, 60) == set()
        [reclaimed] = pool.claim("b", 1, 60)
        assert reclaimed.progress.done == [] and taken[0].progress.done == []
        # Nor can a complete what b now holds.
        pool.complete_many("a", held)
        assert pool.size() == 2
        pool.complete_many("b", [*taken, reclaimed])
        assert pool.size() == 0

    def test_completion_counts_and_finishes(self, pool):
        items = fill(pool, 2)
        pool.complete_many("a", pool.claim("a", 10, 60))
        assert all(pool.state.is_finished(item.id) for item in items)
        assert pool.state.stats()["delivered"] == 2 and pool.size() == 0
        assert pool.next_due_in() is None

    def test_reschedule_waits_and_counts_the_attempt(self, pool):
        fill(pool, 1)
        [item] = pool.claim("a", 1, 60)
        item.progress.done.append("profile")
        pool.reschedule("a", item, time.time() + 0.4, {"status": 503})
        assert pool.claim("b", 1, 60) == []
        wait = pool.next_due_in()
        assert wait is not None and 0.2 < wait <= 0.4
        pool.reschedule("b", item, time.time(), {})  # b holds no lease on it: ignored
        assert pool.claim("b", 1, 60) == []
        time.sleep(0.45)
        [again] = pool.claim("b", 1, 60)
        assert again.attempts == 1 and again.progress.done == ["profile"]

    def test_claiming_ahead_gathers_what_falls_due_soon(self, pool):
        fill(pool, 1)
        [item] = pool.claim("a", 1, 60)
        pool.reschedule("a", item, time.time() + 0.5, {"status": 503})
        assert pool.claim("b", 1, 60) == []
        assert len(pool.claim("b", 1, 60, ahead=1.0)) == 1

    def test_bury_writes_the_dead_letter_single_tasks_write(self, pool):
        [item] = fill(pool, 1)
        [claimed] = pool.claim("a", 1, 60)
        pool.bury("a", claimed, {"status": 400, "detail": "bad"})
        [letter] = pool.state.dead_letters()
        assert letter["id"] == item.id and letter["attempts"] == 1
        assert Submission.from_dict(letter["submission"]).profile == item.profile
        assert pool.state.is_finished(item.id) and pool.size() == 0

    def test_pause_and_rate_slots_are_the_fleets(self, pool):
        pool.pause(2)
        assert 1.5 < pool.paused_for() <= 2
        assert pool.state.paused_for() > 1.5

    def test_one_drain_is_wanted_at_a_time(self, pool):
        assert pool.want_drain(0)
        assert not pool.want_drain(0)
        assert not pool.want_drain(30)
        pool.drain_started()
        assert pool.want_drain(10)

    def test_a_drain_counting_down_does_not_hold_back_a_new_backlog(self, pool):
        assert pool.want_drain(600)  # a successor waiting for a retry
        assert pool.want_drain(0)  # submissions pooled now need a drain now
        assert not pool.want_drain(0.5)


def courier(pool: RedisPool, owner: str = "drain") -> Courier:
    return Courier(pool, KlaviyoClient(API_KEY, api_url=API_URL), owner,
                   limits=dict(ENDPOINT_LIMITS), retry=RetryPolicy(base=0.01, cap=0.02),
                   lease=60, max_age=3600)


class TestRoundsAndOutages:
    def test_one_round_starts_an_interval_for_the_fleet(self, pool):
        other = RedisState(REDIS, pool.state.account)
        assert pool.state.take_turn("round", 0.3)
        assert not other.take_turn("round", 0.3)
        assert 0 < other.turn_free_in("round") <= 0.3
        time.sleep(0.35)
        assert other.turn_free_in("round") == 0 and other.take_turn("round", 0.3)

    def test_klaviyos_return_brings_forward_only_what_an_outage_put_off(self, pool):
        later = time.time() + 3600
        waiting = {reason: identify(f"r{number}@example.com") for number, reason in enumerate(
            ["503", "timeout", "429", "none"])}
        errors = {"503": {"status": 503}, "timeout": {"status": None, "code": "timeout"},
                  "429": {"status": 429}, "none": None}
        for reason, item in waiting.items():
            pool.add(item, Progress(), 1, time.time(), later, errors[reason])
        leased = identify(f"r{9}@example.com")
        pool.add(leased, Progress(), 1, time.time(), 0, {"status": 503})
        assert [item.submission.id for item in pool.claim("a", 10, 60)] == [leased.id]
        assert pool.bring_forward() == 2
        due = {item.submission.id for item in pool.claim("b", 10, 60)}
        assert due == {waiting["503"].id, waiting["timeout"].id}

    def test_an_outage_is_known_to_the_fleet_until_klaviyo_answers(self, pool, klaviyo):
        klaviyo.fail("/api/profile-import", 503)
        item = identify("r1@example.com")
        pool.add(item, Progress(), 0, time.time())

        def courier() -> Courier:
            return Courier(pool, KlaviyoClient(API_KEY, api_url=API_URL), "c",
                           limits=dict(ENDPOINT_LIMITS), retry=RetryPolicy(), lease=30,
                           max_age=3600)

        first = courier()
        assert first.outage_since is None
        first.deliver_round(pool.claim("c", 1, 30), use_bulk=False)
        assert pool.state.outage_since() is not None
        assert pool.next_due_in() > 0
        # Another worker's courier knows; its first answer ends the outage
        # and what it put off is due at once.
        second = courier()
        assert second.outage_since is not None
        time.sleep(pool.paused_for())
        second.deliver_round(pool.claim("c", 1, 30, ahead=3600), use_bulk=False)
        assert pool.state.outage_since() is None
        assert "r1@example.com" in klaviyo.profiles


def test_a_patient_courier_hands_back_what_would_wait_too_long(pool, klaviyo):
    fill(pool, 1)
    [claimed] = pool.claim("a", 1, 60)
    pool.pause(10)
    sender = Courier(pool, KlaviyoClient(API_KEY, api_url=API_URL), "a",
                     limits=dict(ENDPOINT_LIMITS), retry=RetryPolicy(), lease=60,
                     max_age=3600, patience=2.0)
    with pytest.raises(Postponed) as postponed:
        sender.deliver(claimed)
    assert 9 < postponed.value.seconds <= 10
    assert klaviyo.paths() == []


def drain(pool: RedisPool, items: list[Submission], use_bulk: bool) -> None:
    for item in items:
        pool.add(item, Progress(), 0, time.time())
    sender = courier(pool)
    deadline = time.monotonic() + 30
    while pool.size():
        assert time.monotonic() < deadline, "the pool did not drain"
        claimed = pool.claim(sender.owner, 1000, 60)
        sender.deliver_round(claimed, use_bulk=use_bulk)
        time.sleep(0.01)


def test_a_pooled_backlog_gives_the_same_klaviyo_as_single_calls(pool, klaviyo):
    items = backlog(120)
    drain(pool, items, use_bulk=True)
    bulk_calls = Counter(klaviyo.paths())
    bulk_state = state(klaviyo)
    redis.Redis.from_url(REDIS).flushdb()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        singles = MockedKlaviyo(mock)
        drain(pool, items, use_bulk=False)
    assert singles.violations == []
    assert bulk_state == state(singles)
    assert len(bulk_state["events"]) == 90
    # One import job per set of lists, one subscribe job per list, one events job.
    polls = sum(count for path, count in bulk_calls.items()
                if path.startswith("/api/profile-bulk-import-jobs/"))
    # ...and each import job is asked about once it has had time to finish.
    assert sum(bulk_calls.values()) - polls == 2 + 2 + 1 < len(singles.paths())
    assert polls == 2
    assert set(subscriptions_sent(klaviyo).values()) == {1}


def test_a_transient_bulk_failure_is_rescheduled_in_the_pool(pool, klaviyo):
    klaviyo.fail("/api/event-bulk-create-jobs", 503)
    drain(pool, backlog(20), use_bulk=True)
    assert len(klaviyo.events) == 15
    # Only the failed stage was sent again.
    assert set(subscriptions_sent(klaviyo).values()) == {1}
    assert klaviyo.paths().count("/api/event-bulk-create-jobs") == 2


def test_a_failed_bulk_call_keeps_its_submissions_due_together(pool, klaviyo):
    klaviyo.fail("/api/event-bulk-create-jobs", 503)
    for item in backlog(40):
        pool.add(item, Progress(), 0, time.time())
    courier(pool).deliver_round(pool.claim("drain", 100, 60), use_bulk=True)
    due = [score for _, score in pool.redis.zrange(pool.state.key("pool", "ready"), 0, -1,
                                                   withscores=True)]
    # 30 had events; one jitter for the call, so they come back as one bulk call.
    assert len(due) == 30 and max(due) - min(due) < 100


def test_a_refused_submission_is_buried_and_the_rest_delivered(pool, klaviyo):
    klaviyo.fail("/api/event-bulk-create-jobs", 400)
    klaviyo.fail("/api/events", 400)
    drain(pool, backlog(8), use_bulk=True)
    assert len(pool.state.dead_letters()) == 1
    assert len(klaviyo.events) == 6 - 1
    assert pool.state.stats()["delivered"] == 7


def test_a_429_pauses_the_whole_fleet(pool, klaviyo):
    klaviyo.fail("/api/profile-bulk-import-jobs", 429, headers={"Retry-After": "2"})
    items = backlog(8)
    for item in items:
        pool.add(item, Progress(), 0, time.time())
    started = time.monotonic()
    courier(pool).deliver_round(pool.claim("drain", 100, 60), use_bulk=True)
    # The round's next call waited out the pause; the six refused wait in the pool.
    assert time.monotonic() - started >= 1.9
    assert klaviyo.paths().count("/api/profile-bulk-import-jobs") == 2
    assert pool.size() == 6 and pool.claim("other", 100, 60) == []
