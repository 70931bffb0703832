"""The courier's decisions as plain calls: no sender threads, no waiting.

Each scenario runs on the in-memory lease store (tests/support/memory_store.py)
and on the spool, so the memory store stays true to a real one; the spool's
own semantics (leases across processes, intakes, sizes) are tests/test_spool.py's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from klaviyo_middleware.delivery.courier import PROBE_INTERVAL, Courier, Postponed
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.klaviyo.client import KlaviyoClient, KlaviyoError
from klaviyo_middleware.klaviyo.limits import ENDPOINT_LIMITS
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.submission import Submission

from support.factories import ACCOUNT, HookRecorder, identify, submission
from support.klaviyo_fake import API_KEY, API_URL, MockedKlaviyo
from support.memory_store import MemoryStore

OWNER = "courier-test"
RETRY = RetryPolicy(base=0.5, cap=4.0)


class Kept:
    """One store as the tests see it: what waits, what died."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def enqueue(self, item: Submission) -> None:
        self.store.enqueue(item)

    def claim(self, limit: int = 10) -> list[Leased]:
        return list(self.store.claim(OWNER, limit, 60.0))

    def waiting(self) -> dict[str, tuple[int, float, list[str]]]:
        """id → (failed attempts, due at, steps done)."""
        if isinstance(self.store, MemoryStore):
            return {key: (row.attempts, row.due_at, row.progress.done)
                    for key, row in self.store.rows.items()}
        with self.store.reading() as db:
            rows = db.execute("SELECT id, attempts, due_at, progress FROM submissions").fetchall()
        return {key: (attempts, due_at, json.loads(progress).get("done", []))
                for key, attempts, due_at, progress in rows}

    def dead(self) -> dict[str, tuple[int | None, int]]:
        """id → (Klaviyo's status, attempts)."""
        if isinstance(self.store, MemoryStore):
            return {key: (letter.error["status"], letter.attempts)
                    for key, letter in self.store.dead.items()}
        return {letter.id: (letter.error["status"], letter.attempts)
                for letter in self.store.dead_letters()}

    def take_over(self, submission_id: str) -> None:
        """Another sender takes the lease (ours ran out meanwhile)."""
        if isinstance(self.store, MemoryStore):
            self.store.rows[submission_id].owner = "another"
            return
        with self.store.transaction() as db:
            db.execute("UPDATE submissions SET lease_owner = 'another' WHERE id = ?",
                       (submission_id,))


@pytest.fixture(params=["memory", "spool"])
def kept(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Kept]:
    if request.param == "memory":
        yield Kept(MemoryStore())
        return
    spool = Spool(tmp_path / "spool.sqlite3", ACCOUNT)
    yield Kept(spool)
    spool.close()


@pytest.fixture
def recorder() -> HookRecorder:
    return HookRecorder()


def courier(kept: Kept, recorder: HookRecorder, **options: Any) -> Courier:
    values: dict[str, Any] = {"limits": dict(ENDPOINT_LIMITS), "retry": RETRY, "lease": 60.0,
                              "max_age": 3600.0, "hooks": recorder.hooks}
    values.update(options)
    return Courier(kept.store, KlaviyoClient(API_KEY, api_url=API_URL), OWNER, **values)


def one(kept: Kept, item: Submission) -> Leased:
    kept.enqueue(item)
    [leased] = kept.claim()
    return leased


def test_every_step_once_then_the_submission_is_gone(kept, recorder, klaviyo: MockedKlaviyo):
    item = submission(1, properties={"plan": "pro"})
    courier(kept, recorder).deliver(one(kept, item))
    assert klaviyo.paths() == ["/api/profile-import",
                               "/api/profile-subscription-bulk-create-jobs", "/api/events"]
    assert kept.waiting() == {} and kept.dead() == {}
    assert recorder.delivered_ids == [item.id]


def test_a_failed_step_waits_with_the_done_steps_kept(kept, recorder, klaviyo):
    klaviyo.fail("/api/events", 503)
    item = submission(1, properties={"plan": "pro"})
    before = time.time()
    sender = courier(kept, recorder)
    sender.deliver(one(kept, item))
    attempts, due_at, done = kept.waiting()[item.id]
    assert attempts == 1 and before < due_at <= time.time() + RETRY.base
    assert "profile" in done and "event" not in done and len(done) == 2
    assert [status for status, _ in recorder.retries] == [503]
    # Klaviyo failing is an outage: the account waits for a probe.
    assert sender.outage_since is not None
    assert 0 < kept.store.paused_for() <= PROBE_INTERVAL


def test_a_refusal_is_a_dead_letter_at_once(kept, recorder, klaviyo):
    klaviyo.fail("/api/profile-import", 400)
    item = submission(1, properties={"plan": "pro"})
    courier(kept, recorder).deliver(one(kept, item))
    assert kept.dead() == {item.id: (400, 1)} and kept.waiting() == {}
    assert recorder.dead_ids == [item.id] and recorder.retries == []
    assert klaviyo.paths() == ["/api/profile-import"]


def test_429_pauses_the_whole_account_for_its_retry_after(kept, recorder, klaviyo):
    klaviyo.fail("/api/profile-import", 429, headers={"Retry-After": "7"})
    item = identify("a@example.com")
    sender = courier(kept, recorder)
    sender.deliver(one(kept, item))
    assert 6 < kept.store.paused_for() <= 7
    assert recorder.retries == [(429, 7.0)]
    assert kept.waiting()[item.id][0] == 1
    assert sender.outage_since is None  # Klaviyo answered: busy, not down


def test_a_failure_older_than_max_age_is_a_dead_letter(kept, recorder, klaviyo):
    klaviyo.fail("/api/profile-import", 503)
    item = identify("a@example.com")
    courier(kept, recorder, max_age=0.0).deliver(one(kept, item))
    assert kept.dead() == {item.id: (503, 1)} and kept.waiting() == {}


def test_an_outage_hands_the_rest_of_a_round_to_the_probe(kept, recorder, klaviyo):
    klaviyo.fail("/api/profile-import", 503)
    items = [identify(f"p{number}@example.com") for number in range(3)]
    for item in items:
        kept.enqueue(item)
    before = time.time()
    courier(kept, recorder).deliver_round(kept.claim(), use_bulk=False)
    assert klaviyo.paths() == ["/api/profile-import"]  # one call, not three failures
    waiting = kept.waiting()
    assert waiting[items[0].id][0] == 1
    for item in items[1:]:
        attempts, due_at, _ = waiting[item.id]
        assert attempts == 0  # put off, not failed
        assert before + PROBE_INTERVAL <= due_at <= time.time() + PROBE_INTERVAL


def test_a_patient_courier_hands_back_what_a_pause_would_hold(kept, recorder, klaviyo):
    kept.store.pause(10.0)
    with pytest.raises(Postponed) as postponed:
        courier(kept, recorder, patience=1.0).deliver(one(kept, identify("a@example.com")))
    assert 9 < postponed.value.seconds <= 10
    assert klaviyo.calls == []


def test_an_older_submission_sent_later_keeps_only_what_is_still_its_own(
        kept, recorder, klaviyo):
    older = submission(1, event=None, lists=[],
                       properties={"plan": "basic", "city": "Ghent"})
    newer = submission(1, event=None, lists=[], properties={"plan": "pro"})
    kept.enqueue(older)
    kept.enqueue(newer)
    claimed = {item.submission.id: item for item in kept.claim()}
    sender = courier(kept, recorder)
    sender.deliver(claimed[newer.id])
    sender.deliver(claimed[older.id])
    assert klaviyo.profiles["p1@example.com"]["properties"] == {"plan": "pro", "city": "Ghent"}
    assert sorted(recorder.delivered_ids) == sorted([older.id, newer.id])


def test_a_lost_lease_stops_the_courier_after_the_step_in_flight(kept, recorder, klaviyo):
    item = submission(1, properties={"plan": "pro"})
    leased = one(kept, item)
    kept.take_over(item.id)
    courier(kept, recorder).deliver(leased)
    assert klaviyo.paths() == ["/api/profile-import"]
    assert item.id in kept.waiting() and recorder.delivered == []


def key_refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelname == "ERROR" and "refused the API key" in record.getMessage()]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_holds_the_account_and_buries_nothing(kept, recorder, klaviyo, caplog,
                                                            status):
    """A 401/403 says the account is misconfigured, not the submission:
    nothing becomes a dead letter, however old, and the log says so once,
    naming the fix."""
    from klaviyo_middleware.delivery import courier as courier_module

    courier_module._key_refusal_said.clear()
    klaviyo.fail("/api/profile-import", status, times=3)
    items = [identify(f"p{number}@example.com") for number in range(3)]
    for item in items:
        kept.enqueue(item)
    sender = courier(kept, recorder, max_age=0.0)
    sender.deliver_round(kept.claim(), use_bulk=False)
    assert kept.dead() == {}
    assert klaviyo.paths() == ["/api/profile-import"]  # the rest wait, untried
    assert set(kept.waiting()) == {item.id for item in items}
    assert courier_module.KEY_RECHECK - 1 < kept.store.paused_for() <= courier_module.KEY_RECHECK
    [said] = key_refusals(caplog)
    assert "KLAVIYO_PRIVATE_API_KEY" in said and "nothing is lost" in said
    assert API_KEY not in said
    # Said again only after the reminder interval.
    refusal = KlaviyoError("Klaviyo answered 401", status=401)
    sender._key_refused(refusal, now=time.time() + 1)
    assert len(key_refusals(caplog)) == 1
    sender._key_refused(refusal, now=time.time() + courier_module.KEY_REMINDER + 1)
    assert len(key_refusals(caplog)) == 2


def test_an_outage_is_a_few_truthful_lines(kept, recorder, klaviyo, caplog):
    """Once when it starts, once a minute at most while it lasts, once when
    it ends — not a line per waiting submission per probe."""
    for number in range(3):
        kept.enqueue(identify(f"p{number}@example.com"))
    sender = courier(kept, recorder)
    failing = KlaviyoError("Klaviyo answered 503", status=503, transient=True)
    start = time.time()
    # Three submissions meeting the outage, over a minute.
    for offset, item in zip((0.0, 2.0, 61.0), kept.claim(), strict=True):
        sender._failed(item, failing, now=start + offset)
    sender._answered()
    warnings = [record.getMessage() for record in caplog.records
                if record.levelname == "WARNING"]
    assert [line.split(";")[0] for line in warnings] == [
        "klaviyo_middleware: Klaviyo is not answering",
        "klaviyo_middleware: Klaviyo still not answering after 61 s"]
    ended = [record.getMessage() for record in caplog.records
             if record.levelname == "INFO" and "answers again" in record.getMessage()]
    assert len(ended) == 1


def test_one_body_that_always_fails_does_not_hold_back_its_bulk_call(kept, recorder, klaviyo,
                                                                     monkeypatch):
    """A proxy that answers 503 to any event bulk job holding one member:
    the call's other members go next time one call each, and get through;
    the failure is about that call, not an outage (nothing paused, nothing
    brought forward as if Klaviyo had been away)."""
    handle = klaviyo.handle

    def poisoned(method: str, path: str, headers: dict[str, str], body: Any, *rest: Any) -> Any:
        if path in ("/api/event-bulk-create-jobs", "/api/events") \
                and "p3@example.com" in json.dumps(body):
            return 503, {}, json.dumps({"errors": []})
        return handle(method, path, headers, body, *rest)

    monkeypatch.setattr(klaviyo, "handle", poisoned)
    items = [submission(number) for number in range(4)]
    for item in items:
        kept.enqueue(item)
    sender = courier(kept, recorder)
    # Twice in bulk (a call may fail once for any reason), then apart.
    for _ in range(2):
        round_ = kept.claim()
        assert {item.submission.id for item in round_} == {item.id for item in items}
        assert not any(item.progress.alone for item in round_)
        sender.deliver_bulk(round_)
        assert klaviyo.events == {}
        assert sender.outage_since is None and kept.store.paused_for() == 0
        time.sleep(RETRY.cap + 0.1)  # due again
    again = kept.claim()
    assert all(item.progress.alone for item in again)
    sender.deliver_bulk(again)
    assert set(klaviyo.events) == {"u-0", "u-1", "u-2"}
    assert list(kept.waiting()) == [items[3].id]
    assert sender.outage_since is None
    # Klaviyo "answering again" brings nothing forward: it never was away.
    assert kept.store.bring_forward() == 0


def test_a_round_sent_one_by_one_keeps_the_leases_of_those_waiting(kept, recorder, klaviyo):
    """One call a step can outlast a lease: the submissions waiting their
    turn keep theirs, so no other sender takes them and sends them too."""
    for number in range(3):
        kept.enqueue(identify(f"p{number}@example.com"))
    lease = 0.6
    round_ = kept.store.claim(OWNER, 10, lease)
    klaviyo.latency = 0.25  # each call; three submissions take 0.75 s or more
    stolen: list[str] = []

    def another_sender_looks(submission: Submission) -> None:
        stolen.extend(item.submission.id for item in kept.store.claim("another", 10, 60.0))

    hooks = HookRecorder()
    hooks.hooks.on_delivered = another_sender_looks
    courier(kept, hooks, lease=lease).deliver_round(round_, use_bulk=False)
    assert stolen == []
    assert kept.waiting() == {}
    assert klaviyo.paths().count("/api/profile-import") == 3
