"""Sending leased submissions to Klaviyo: one call per step, or bulk rounds.

A *lease store* hands out submissions to one owner at a time and records
what happens to them: the SQLite spool on one machine
(:class:`~klaviyo_middleware.delivery.spool.store.Spool`), the Redis pool for a Celery
fleet (:class:`~klaviyo_middleware.delivery.celery.pool.RedisPool`). The
:class:`Courier` does the sending for both, so the two deliver — and retry,
pause, dead-letter and batch — exactly alike:

- before every call it waits out the account-wide pause and takes a slot of
  the endpoint's rate limit, renewing its leases while it waits;
- after every call it saves the progress (a step Klaviyo accepted is never
  sent again) and stops touching a submission whose lease it lost;
- a failure is retried later (Klaviyo's ``Retry-After``, else jittered
  backoff) or buried with Klaviyo's error once permanent or too old;
- a round of more than one goes through the bulk endpoints stage by stage, and a bulk call
  Klaviyo refuses outright is replayed one call per step, so one bad
  submission cannot hold back the rest; an import job is followed until
  Klaviyo has processed it (:mod:`klaviyo_middleware.delivery.import_jobs`);
- a person's profile is written in acceptance order: a profile goes only
  when no other submission about the person is sending one, and without the
  attributes a newer submission has already sent
  (:mod:`klaviyo_middleware.model.profile_order`).

A single Celery task is a lease store too (the broker leases the message,
:mod:`klaviyo_middleware.delivery.celery.single`), so all three queued paths
share this loop. The one policy that differs is how long to wait for
capacity: a spool thread waits (it has nothing else to do), a Celery worker
slot should not sit idle behind a pause, so a courier with ``patience``
raises :class:`Postponed` instead and the task is retried when capacity
returns. ``delivery="sync"`` keeps a loop of its own
(:mod:`klaviyo_middleware.delivery.sync`): a visitor is waiting, so it
retries inline within a time budget and reports failure to them instead of
rescheduling.

A little over the ~500 lines a module here keeps to: the single-call loop,
the bulk round and the failure policy share the outage and pause state, and
split apart each would need the others' private half (job following, the
one part that stands alone, is already its own module).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any, Protocol

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.import_jobs import JobFollow, JobFollower, JobOutcome
from klaviyo_middleware.errors import KEY_REFUSED_STATUSES, DeliveryError
from klaviyo_middleware.klaviyo import bulk, steps
from klaviyo_middleware.klaviyo.client import KlaviyoClient, unserialisable
from klaviyo_middleware.klaviyo.limits import RateLimits, endpoint_for
from klaviyo_middleware.klaviyo.retry import RetryPolicy
from klaviyo_middleware.model import profile_order
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.profile_order import Turn
from klaviyo_middleware.model.progress import ImportJob
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)


class LeaseStore(Protocol):
    """What the courier needs from wherever leased submissions live.

    Due times (``reschedule``) are wall-clock seconds since the epoch; the
    account-wide pause is a duration, the one convention every store can
    keep, whichever clock it lives on (SQLite's rows, Redis's own clock).
    """

    def save_progress_many(self, owner: str, items: list[Leased], lease: float) -> set[str]:
        """Record progress and renew leases; the ids whose lease still held."""
        ...

    def complete_many(self, owner: str, items: list[Leased]) -> None: ...

    def reschedule(
        self, owner: str, claimed: Leased, due_at: float, error: dict[str, Any]
    ) -> None: ...

    def bury(self, owner: str, claimed: Leased, error: dict[str, Any]) -> None: ...

    def pause(self, seconds: float) -> None:
        """Pause the whole account for ``seconds`` (a pause only grows)."""
        ...

    def paused_for(self) -> float:
        """Seconds the account's pause still lasts; 0 when not paused."""
        ...

    def take_rate_slot(self, endpoint: str, limits: RateLimits) -> float: ...

    def take_profile_turns(self, owner: str, items: list[Leased],
                           lease: float) -> dict[str, Turn]:
        """Whether each item may send its profile now (no other submission
        about the same person is sending one), and what newer submissions
        about the person have sent (see model/profile_order.py)."""
        ...

    def postpone(self, owner: str, claimed: Leased, due_at: float) -> None:
        """Hand a submission back until ``due_at``; not a failed attempt."""
        ...


# While Klaviyo fails (5xx, timeouts, no connection), the account pauses for
# this long after each failure, and one probe a period finds out whether it
# answers again: not every submission backing off on its own.
PROBE_INTERVAL = 2.0
# Seconds between the starts of two delivery rounds, for all senders of an
# account: whatever arrives meanwhile goes in the next round, together.
ROUND_INTERVAL = 1.0
# While Klaviyo refuses the key (401, 403), the account waits this long
# between tries, and the log says so again this often.
KEY_RECHECK = 60.0
KEY_REMINDER = 300.0
# When this process last said the key was refused, by API URL (process-wide:
# a Celery worker builds a courier a task).
_key_refusal_said: dict[str, float] = {}
# While Klaviyo does not answer, the log says so again this often at most.
OUTAGE_REMINDER = 60.0
# API URL → (when this process first said Klaviyo is not answering, when last).
_outage_said: dict[str, tuple[float, float]] = {}


def put_off_by_outage(error: dict[str, Any]) -> bool:
    """Whether a recorded failure (``DeliveryError.to_dict()``) was Klaviyo
    failing — no status (a timeout, no connection) or a 5xx — rather than
    refusing or throttling, and not a call that failed while others were
    going through (``isolated``): what Klaviyo's return brings forward. The
    spool says the same in SQL (``PUT_OFF_BY_OUTAGE``), the Redis pool in Lua."""
    if error.get("isolated"):
        return False  # failed while other calls succeeded: not an outage
    status = error.get("status")
    return not isinstance(status, int) or status >= 500


def held_for_the_key(error: dict[str, Any]) -> bool:
    """Whether a recorded failure was Klaviyo refusing the key
    (:attr:`DeliveryError.key_refused`, said of its ``to_dict()``)."""
    return error.get("status") in KEY_REFUSED_STATUSES


class Postponed(Exception):
    """Capacity returns in :attr:`seconds`, later than the courier's patience:
    hand the submission back (progress is saved) and try again then."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"capacity returns in {seconds:.1f}s")
        self.seconds = seconds


class Courier:
    """Delivers what ``owner`` leased from ``store``.

    :param limits: endpoint → the rate limits this site may use.
    :param lease: seconds each renewal of a lease lasts.
    :param max_age: seconds after which a transient failure is buried.
    :param stopping: set to make the courier give up waiting and return;
        what it held stays in the store.
    :param jobs: how profile import jobs are followed to their end.
    :param patience: wait at most this long for capacity (the shared pause
        or a rate-limit slot); a longer wait raises :class:`Postponed`.
        ``None``: wait as long as it takes.
    """

    def __init__(
        self,
        store: LeaseStore,
        client: KlaviyoClient,
        owner: str,
        *,
        limits: dict[str, RateLimits],
        retry: RetryPolicy,
        lease: float,
        max_age: float,
        hooks: Hooks | None = None,
        stopping: threading.Event | None = None,
        patience: float | None = None,
        jobs: JobFollow | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.owner = owner
        self.limits = limits
        self.retry = retry
        self.lease = lease
        self.max_age = max_age
        self.hooks = hooks or Hooks()
        self.stopping = stopping or threading.Event()
        self.patience = patience
        # When Klaviyo stopped answering (None: it answers); see _failing. A
        # fleet's store knows of an outage its other workers met.
        shared = getattr(store, "outage_since", None)
        self.outage_since: float | None = shared() if shared is not None else None
        # When this courier last wrote the account's pause (see _failing).
        self._paused_at: float | None = None
        # When Klaviyo refused the key (None: it accepts it); see _key_refused.
        self.key_refused_since: float | None = None
        # A one-by-one round's submissions still waiting their turn, whose
        # leases _keep_turns renews; and those whose lease was lost meanwhile.
        self._waiting_turn: list[Leased] = []
        self._renewed_at = 0.0
        self._lost: set[str] = set()
        # Whose refusal or outage the log speaks of (a site has one key per
        # API URL); the process-wide memories of what was said are by it.
        self._api_url = client.api_url
        self._jobs = JobFollower(
            client, jobs or JobFollow(), self._wait_for_capacity,
            lambda items, wait: self.store.save_progress_many(owner, items, self.lease + wait),
            self._throttled, self.stopping)
        # One per courier: forked processes must not share their jitter.
        self._rng = random.Random()  # noqa: S311 - jitter, not security

    def deliver_round(self, items: list[Leased], use_bulk: bool) -> None:
        if use_bulk:
            self.deliver_bulk(items)
            return
        self._waiting_turn = list(items)
        self._renewed_at = time.monotonic()
        self._lost = set()
        try:
            self._deliver_in_turn(items)
        finally:
            self._waiting_turn = []

    def _deliver_in_turn(self, items: list[Leased]) -> None:
        for index, item in enumerate(items):
            if self.stopping.is_set():
                return
            if item.submission.id in self._lost:
                continue  # another sender has it since (see _keep_turns)
            if (self.outage_since is not None or self.key_refused_since is not None) and index:
                # Klaviyo just failed, or refused the key: the rest of the
                # round waits rather than each taking its turn to fail.
                due = time.time() + (KEY_RECHECK if self.key_refused_since is not None
                                     else PROBE_INTERVAL)
                for waiting in items[index:]:
                    self.store.postpone(self.owner, waiting, due)
                return
            self.deliver(item)
            # Done with (or handed back): no longer this round's to renew.
            self._waiting_turn = [waiting for waiting in self._waiting_turn
                                  if waiting is not item]

    def deliver(self, item: Leased) -> None:
        """Every pending step of one submission, one call each."""
        submission = item.submission
        if item.progress.job is not None:
            outcome, kept = self._settle_jobs([item])
            if outcome.refused:
                self._bury(item, outcome.refused[0][1])
                return
            if not outcome.unfinished and submission.id not in kept:
                return
        for step in steps.pending(submission, item.progress):
            sending = submission
            if step == steps.PROFILE_STEP:
                turn = self._profile_turn(item)
                if turn is None:
                    return
                sending = replace(submission, profile=turn)
                if self._nothing_new(item, turn):
                    item.progress.done.append(step)
                    continue
            if not self._wait_for_capacity([item], endpoint_for(step)):
                return
            self._keep_turns()
            try:
                steps.run_step(self.client, sending, step, item.progress)
            except DeliveryError as error:
                if error.status == 404 and ":" in step:
                    _unknown_list(step.split(":", 1)[1], error)
                # Alone since its bulk call failed while others went through:
                # failing again, it is about this submission, not an outage.
                self._failed(item, error, isolated=item.progress.alone)
                return
            except Exception as exc:
                log.exception("klaviyo_middleware: unexpected error delivering %s", submission.id)
                self._failed(item, DeliveryError(f"unexpected {type(exc).__name__}",
                                                code="unexpected", transient=True))
                return
            self._answered()
            if not self.store.save_progress_many(self.owner, [item], self.lease):
                log.warning(
                    "klaviyo_middleware: lost the lease on %s; another sender has it",
                    submission.id,
                )
                return
        self.store.complete_many(self.owner, [item])
        self.hooks.delivered(submission)

    def _keep_turns(self, besides: list[Leased] | None = None) -> None:
        """Renew the leases of the round's submissions not done yet, this one
        and those waiting their turn behind it (when a third of a lease has
        passed since the last renewal): one call a step, with rate limits,
        can outlast a lease, and another sender would take them and send
        what this one then sends too. Those whose lease is gone already are
        left to their new holder. ``besides``: those whose leases the caller
        has just renewed (for longer: a wait for capacity)."""
        renewed = {item.submission.id for item in besides or []}
        waiting = [item for item in self._waiting_turn if item.submission.id not in renewed]
        if not waiting or time.monotonic() - self._renewed_at < self.lease / 3:
            return
        self._renewed_at = time.monotonic()
        kept = self.store.save_progress_many(self.owner, waiting, self.lease)
        lost = {item.submission.id for item in waiting if item.submission.id not in kept}
        self._lost.update(lost)
        self._waiting_turn = [item for item in self._waiting_turn
                              if item.submission.id not in lost]

    def _profile_turn(self, item: Leased) -> dict[str, Any] | None:
        """The profile ``item`` may send now, or ``None`` when another
        submission about the person is sending one (``item`` is handed back)."""
        turn = self.store.take_profile_turns(self.owner, [item], self.lease)[
            item.submission.id]
        if turn.wait > 0:
            self._postpone(item, turn.wait)
            return None
        return profile_order.still_ours(item.submission.profile, turn.marks,
                                        item.submission.accepted_at)

    def _nothing_new(self, item: Leased, profile: dict[str, Any]) -> bool:
        """Newer submissions have sent everything this one would (and it
        joins no list that needs the profile's id): no call at all."""
        return (profile != item.submission.profile and profile_order.only_identity(profile)
                and not any(step.startswith("add:")
                            for step in steps.pending(item.submission, item.progress)))

    def _postpone(self, item: Leased, wait: float) -> None:
        if self.patience is not None:
            # A Celery task: the broker keeps it until then.
            raise Postponed(max(wait, 0.1))
        self.store.postpone(self.owner, item, time.time() + max(wait, 0.1))

    def _profile_turns(self, round_: _Round) -> dict[str, dict[str, Any]]:
        """Per-person order for a bulk round: who may send a profile now, and
        what each may send (:func:`profile_order.order_in_round`); those who
        must wait leave the round, those with nothing new need no call."""
        needing = [item for item in round_.active if item.progress.job is None
                   and steps.PROFILE_STEP not in item.progress.done]
        if not needing:
            return {}
        turns = self.store.take_profile_turns(self.owner, needing, self.lease)
        waiting = [item for item in needing if turns[item.submission.id].wait > 0]
        for item in waiting:
            self._postpone(item, turns[item.submission.id].wait)
        round_.leave(waiting)
        going = [item for item in needing if turns[item.submission.id].wait <= 0]
        allowed = profile_order.order_in_round(
            [(item.submission, turns[item.submission.id].marks) for item in going])
        for item in going:
            if self._nothing_new(item, allowed[item.submission.id]):
                item.progress.done.append(steps.PROFILE_STEP)
        return allowed

    def deliver_bulk(self, items: list[Leased]) -> None:
        """Deliver a round through the bulk endpoints, stage by stage.

        Profiles first, in import jobs followed until Klaviyo has processed
        them (or given up on and sent one by one); then subscriptions and
        events for the submissions whose profile is in."""
        items = self._sendable(items)
        alone = [item for item in items if item.progress.alone]
        round_ = _Round([item for item in items if not item.progress.alone])
        round_.singles.extend(alone)
        profiles = self._profile_turns(round_)
        if not self._send_stage(round_, partial(bulk.profile_imports, profiles=profiles)):
            return
        following = [item for item in round_.active if item.progress.job is not None]
        if following:
            outcome, kept = self._settle_jobs(following)
            round_.refused.extend(outcome.refused)
            round_.singles.extend(outcome.unfinished)
            imported = {item.submission.id for item in outcome.imported} & kept
            round_.active = [item for item in round_.active
                             if item.progress.job is None or item.submission.id in imported]
            round_.drop_failed()
        for stage in (bulk.subscriptions, bulk.events):
            if not self._send_stage(round_, stage):
                return
        self.store.complete_many(self.owner, round_.active)
        for item in round_.active:
            self.hooks.delivered(item.submission)
        now = time.time()
        for item in items:
            if item.submission.id in round_.failed:
                cause, jitter = round_.failed[item.submission.id]
                # Its call failed while others went through, or failed so
                # before: about that call's bodies, not Klaviyo. The second
                # time, each goes alone next, so the one at fault holds back
                # nobody (progress.bulk_failures).
                isolated = round_.answered or item.progress.bulk_failures > 0
                if isolated:
                    item.progress.bulk_failures += 1
                self._failed(item, cause, _SharedJitter(jitter), now, isolated=isolated)
        for item, error in round_.refused:
            self._bury(item, error)
        for item in round_.singles:
            if self.stopping.is_set():
                return
            self.deliver(item)

    def _send_stage(self, round_: _Round,
                    stage: Callable[[list[Leased]], list[bulk.BulkCall]]) -> bool:
        """Send one stage's bulk calls; ``False`` when stopping."""
        for call in stage(round_.active):
            members = [item for item, _ in call.members]
            if not self._wait_for_capacity(members, call.endpoint):
                return False
            try:
                job_id = call.send(self.client)
                self._answered()
                round_.answered = True
            except DeliveryError as error:
                if error.status == 429:
                    self._throttled(error)
                if error.transient or error.key_refused:
                    # One jitter for the whole call keeps its submissions
                    # due together, so that they are retried as one bulk
                    # call rather than scattered into single ones.
                    jitter = self._rng.random()
                    round_.failed.update((item.submission.id, (error, jitter))
                                         for item in members)
                else:
                    # Klaviyo refused the whole job; one call per step
                    # finds the submission at fault and delivers the rest.
                    log.warning("klaviyo_middleware: bulk call refused (%s); "
                                "delivering its %d submissions one by one",
                                error, len(members))
                    round_.singles.extend(members)
                continue
            if call.follow and job_id is not None:
                # Done only once Klaviyo has processed the job; saved now, so
                # that whoever has these next follows the job, not resends.
                since = time.time()
                for index, item in enumerate(members):
                    item.progress.job = ImportJob(job_id, index, since)
            else:
                for item, done in call.members:
                    item.progress.done.extend(step for step in done
                                              if step not in item.progress.done)
            round_.keep(self.store.save_progress_many(self.owner, members, self.lease), members)
        round_.drop_failed()
        return True

    def _settle_jobs(self, following: list[Leased]) -> tuple[JobOutcome, set[str]]:
        """Follow the import jobs of ``following`` to their end and record what
        they did; the outcome, and the ids of the imported whose lease held.
        Whoever is in none of the outcome's lists is undecided (stopping, or
        the lease was lost): the job stays recorded for the next sender."""
        outcome = self._jobs.follow(following)
        for item in outcome.imported:
            item.progress.done.extend(step for step in bulk.import_steps(item)
                                      if step not in item.progress.done)
            item.progress.job = None
        kept = self.store.save_progress_many(self.owner, outcome.imported, self.lease)
        for item in outcome.unfinished:
            item.progress.job = None
        return outcome, kept

    def _sendable(self, items: list[Leased]) -> list[Leased]:
        """Bury alone what cannot be sent as JSON: in a bulk body it would
        fail the call for everyone with it."""
        sendable = []
        for item in items:
            try:
                json.dumps(item.submission.to_dict(), allow_nan=False)
            except (TypeError, ValueError) as exc:
                self._bury(item, unserialisable(exc))
                continue
            sendable.append(item)
        return sendable

    def _wait_for_capacity(self, items: list[Leased], endpoint: str) -> bool:
        """Wait out a shared pause and the rate limit; ``False`` if stopping.

        Raises :class:`Postponed` when the wait would outlast ``patience``."""
        while not self.stopping.is_set():
            pause = self.store.paused_for()
            wait = pause if pause > 0 else self.store.take_rate_slot(
                endpoint, self.limits[endpoint]
            )
            if wait <= 0:
                return True
            if self.patience is not None and wait > self.patience:
                raise Postponed(wait)
            # Keep the leases while waiting, so nobody else picks these up.
            kept = self.store.save_progress_many(self.owner, items, self.lease + wait)
            if len(kept) < len(items):
                return False
            self._keep_turns(besides=items)
            self.stopping.wait(min(wait, self.lease / 3))
        return False

    def _failed(self, item: Leased, error: DeliveryError,
                rng: random.Random | None = None, now: float | None = None,
                isolated: bool = False) -> None:
        """``isolated``: it failed in a bulk call while other calls of its
        round went through — about that call, not an outage."""
        submission = item.submission
        now = time.time() if now is None else now
        if error.key_refused:
            # The account is misconfigured, not the submission: it waits for
            # the key to be put right, however long that takes.
            self._key_refused(error, now)
            self.store.reschedule(self.owner, item, now + KEY_RECHECK, error.to_dict())
            self.hooks.retrying(submission, error, KEY_RECHECK)
            return
        if error.status == 429:
            self._throttled(error)
        elif error.transient and error.code != "unexpected" and not isolated:
            # Klaviyo itself failing (5xx, a timeout, no connection), not a bug here.
            self._failing(now)
        delay = self.retry.later(error, item.attempts + 1, now - item.created_at,
                                 self.max_age, rng or self._rng)
        if delay is None:
            self._bury(item, error)
            return
        if self.outage_since is not None and put_off_by_outage(error.to_dict()):
            # The outage's own lines speak for every submission it holds
            # (its probe, not this backoff, decides when they go).
            log.debug("klaviyo_middleware: submission %s waits for Klaviyo: %s",
                      submission.id, error)
        else:
            log.warning(
                "klaviyo_middleware: submission %s will be retried in %.1fs: %s",
                submission.id,
                delay,
                error,
            )
        recorded = error.to_dict()
        if isolated:
            recorded["isolated"] = True
        self.store.reschedule(self.owner, item, now + delay, recorded)
        self.hooks.retrying(submission, error, delay)

    def _failing(self, now: float) -> None:
        """Klaviyo did not answer: hold the account for a probe's interval."""
        if self.outage_since is None:
            self.outage_since = now
        # Once when it starts and once a minute at most while it lasts, for
        # the whole process (a Celery worker builds a courier a task).
        said = _outage_said.get(self._api_url)
        if said is None:
            _outage_said[self._api_url] = (now, now)
            log.warning("klaviyo_middleware: Klaviyo is not answering; delivery waits, "
                        "trying one call every %.0f s", PROBE_INTERVAL)
        elif now - said[1] >= OUTAGE_REMINDER:
            _outage_said[self._api_url] = (said[0], now)
            log.warning("klaviyo_middleware: Klaviyo still not answering after %.0f s; "
                        "delivery waits, trying one call every %.0f s", now - said[0],
                        PROBE_INTERVAL)
        # The failed members of one bulk round arrive here with one ``now``:
        # one write of the shared pause serves them all.
        if now != self._paused_at:
            self._paused_at = now
            self.store.pause(PROBE_INTERVAL)
            note = getattr(self.store, "note_outage", None)
            if note is not None:
                note(now)

    def _key_refused(self, error: DeliveryError, now: float) -> None:
        """Klaviyo refused the key: the account waits :data:`KEY_RECHECK`,
        and the log says so at once and every :data:`KEY_REMINDER` after."""
        if now != self._paused_at:
            self._paused_at = now
            self.store.pause(KEY_RECHECK)
        self.key_refused_since = self.key_refused_since or now
        account = self._api_url
        if now - _key_refusal_said.get(account, 0.0) >= KEY_REMINDER:
            _key_refusal_said[account] = now
            log.error(
                "klaviyo_middleware: Klaviyo refused the API key (%s): delivery is held, "
                "nothing is lost or dead-lettered, and it goes on by itself once the key "
                "is right. Set api_key (KLAVIYO_PRIVATE_API_KEY) to a private key with "
                "the profiles, lists, events and subscriptions write scopes — "
                "`klaviyo-middleware check` tells which scope is missing — and restart",
                error)

    def _answered(self) -> None:
        """Klaviyo answered: if it had not been, what it put off is due now."""
        if self.key_refused_since is not None:
            self.key_refused_since = None
            if _key_refusal_said.pop(self._api_url, None) is not None:
                log.info("klaviyo_middleware: Klaviyo accepts the API key again; "
                         "delivery goes on")
        since = self.outage_since
        if since is None:
            return
        self.outage_since = None
        said = _outage_said.pop(self._api_url, None)
        if said is not None:
            since = min(since, said[0])
        end = getattr(self.store, "end_outage", None)
        if end is not None:
            end()
        bring_forward = getattr(self.store, "bring_forward", None)
        due = bring_forward() if bring_forward is not None else 0
        # Said by whoever said it started (each sender thread has a courier).
        log.log(logging.INFO if said is not None else logging.DEBUG,
                "klaviyo_middleware: Klaviyo answers again after %.0f s; %d postponed "
                "submissions are due now", time.time() - since, due)

    def _bury(self, item: Leased, error: DeliveryError) -> None:
        log.error(
            "klaviyo_middleware: submission %s dead-lettered (steps done: %s): %s",
            item.submission.id,
            ", ".join(item.progress.done) or "none",
            error,
        )
        self.store.bury(self.owner, item, error.to_dict())
        self.hooks.dead(item.submission, error)

    def _throttled(self, error: DeliveryError) -> None:
        """Klaviyo answered 429: the whole account waits its ``Retry-After``."""
        self.store.pause(error.retry_after or self._backoff(1))

    def _backoff(self, attempt: int) -> float:
        return self.retry.backoff(attempt, self._rng)


# List ids said to be unknown, once each per process, up to a bound: junk
# posted to random list ids must not grow memory nor flood the log.
_UNKNOWN_LISTS_SAID: set[str] = set()
MAX_UNKNOWN_LISTS_SAID = 100


def _unknown_list(list_id: str, error: DeliveryError) -> None:
    """The first time Klaviyo says a list does not exist: which list, why,
    and the one command that sends those dead letters to the right one."""
    if list_id in _UNKNOWN_LISTS_SAID or len(_UNKNOWN_LISTS_SAID) >= MAX_UNKNOWN_LISTS_SAID:
        return
    _UNKNOWN_LISTS_SAID.add(list_id)
    log.error(
        "klaviyo_middleware: Klaviyo has no list %r (%s: %s). Submissions naming it "
        "are dead letters from that step on (the profile is in). Put the list id right in "
        "the form (its list field), then send them to the right list: "
        "`klaviyo-middleware spool retry --list %s=RIGHT_ID` (on Celery: `klaviyo-middleware "
        "celery retry --list %s=RIGHT_ID`)",
        list_id[:64], error.status, (error.detail or "not found")[:200], list_id[:64],
        list_id[:64])


class _Round:
    """One bulk round's bookkeeping: who is still going, and who left how."""

    def __init__(self, items: list[Leased]) -> None:
        self.items = items
        self.active = list(items)
        # id → the error and the jitter of the call that failed it.
        self.failed: dict[str, tuple[DeliveryError, float]] = {}
        self.singles: list[Leased] = []
        self.refused: list[tuple[Leased, DeliveryError]] = []
        # Whether any call of the round went through.
        self.answered = False

    def keep(self, kept: set[str], members: list[Leased]) -> None:
        """Leave out the members whose lease was lost (or who are undecided)."""
        lost = {item.submission.id for item in members} - kept
        if lost:
            log.warning("klaviyo_middleware: %d submissions leave this round (lease lost "
                        "or job unfinished)", len(lost))
            self.active = [item for item in self.active if item.submission.id not in lost]

    def leave(self, items: list[Leased]) -> None:
        gone = {item.submission.id for item in items}
        self.active = [item for item in self.active if item.submission.id not in gone]

    def drop_failed(self) -> None:
        gone = set(self.failed) | {item.submission.id for item in self.singles} | {
            item.submission.id for item, _ in self.refused}
        self.active = [item for item in self.active if item.submission.id not in gone]


class _SharedJitter(random.Random):
    """Jitter drawn once and shared: every draw gives the same fraction."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction
