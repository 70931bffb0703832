"""The pool for Celery delivery: submissions leased from Redis, sent in rounds.

One Celery task per submission means one Klaviyo call per step, which
steady traffic and a backlog cannot afford (10,000 submissions with a list
and an event are 30,000 calls, an afternoon at Klaviyo's limits). When a
task's submission arrives while a delivery round is young, or finds its
queue backed up, or meets Klaviyo failing, the task moves the submission
here — progress and all — and lets the broker acknowledge it; a *drain*
task then leases the pooled submissions in rounds and sends them through
the bulk endpoints with the same
:class:`~klaviyo_middleware.delivery.courier.Courier` the SQLite spool uses.

It is the spool's table, in Redis, so that every worker on every machine
shares it:

- ``pool:items`` (hash) — id → the submission, its progress, attempts, age;
- ``pool:ready`` (sorted set) — id → when it may next be claimed: its due
  time, or while leased the end of the lease, so an expired lease (a worker
  killed mid-round) makes it claimable again without anyone noticing the death;
- ``pool:owners`` (hash) — id → the owner of the current lease; every write
  checks it, so a worker that lost its lease cannot overwrite the new owner.

Each operation is one Lua script, atomic in Redis and timed by Redis's own
clock, so workers with skewed clocks still agree on leases and due times.
Delivered and dead submissions join the ``finished`` set that single-task
delivery uses, so a task re-delivered by the broker after its submission was
pooled and sent does not send it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from klaviyo_middleware.delivery.celery.state import PROGRESS_TTL, RedisState, SharedCapacity
from klaviyo_middleware.delivery.celery.turns import PersonTurns
from klaviyo_middleware.delivery.courier import KEY_RECHECK, held_for_the_key
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission, is_about

_NOW = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# KEYS: items, ready, single-task progress. ARGV: id, record, created ms, due
# ms (0: now). 1 if added, 0 if already pooled. Due now ranked by age (claims
# go oldest first); the record carries the progress from now on.
_ADD = _NOW + """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local due = tonumber(ARGV[4])
if due <= now then due = math.min(now, tonumber(ARGV[3])) end
redis.call('ZADD', KEYS[2], due, ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS: items, ready, owners. ARGV: owner, limit, lease ms, ahead ms. The
# records leased: those due now, or within ``ahead``.
_CLAIM = _NOW + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now + tonumber(ARGV[4]),
                       'LIMIT', 0, tonumber(ARGV[2]))
local records = {}
for _, id in ipairs(ids) do
  local record = redis.call('HGET', KEYS[1], id)
  if record then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), id)
    redis.call('HSET', KEYS[3], id, ARGV[1])
    table.insert(records, record)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return records
"""

# KEYS: items, ready, owners. ARGV: owner, lease ms, then (id, record) pairs.
# Saves progress and renews the lease where the lease still holds; returns those ids.
_SAVE = _NOW + """
local kept = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local until_ms = tonumber(redis.call('ZSCORE', KEYS[2], id) or '0')
  if redis.call('HGET', KEYS[3], id) == ARGV[1] and until_ms > now then
    redis.call('HSET', KEYS[1], id, ARGV[i + 1])
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
    table.insert(kept, id)
  end
end
return kept
"""

# KEYS: items, ready, owners, finished, delivered. ARGV: owner, ttl s, ids...
_COMPLETE = """
local removed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[3], id) == ARGV[1] then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('SADD', KEYS[4], id)
    removed = removed + 1
  end
end
if removed > 0 then
  redis.call('INCRBY', KEYS[5], removed)
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[2]))
end
return removed
"""

# KEYS: items, ready, owners. ARGV: owner, id, record, delay ms.
_RESCHEDULE = _NOW + """
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
"""

# KEYS: items, ready, owners. ARGV: owner, id. Out of the pool, not finished:
# 1 if it was this owner's to take out.
_RELEASE = """
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
"""

# KEYS: items, ready, owners. ARGV: limit. Up to ``limit`` records nobody
# leases, taken out of the pool (not finished): for the broker's queue.
_TAKE_UNLEASED = """
local ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
local records = {}
for _, id in ipairs(ids) do
  if redis.call('HEXISTS', KEYS[3], id) == 0 then
    local record = redis.call('HGET', KEYS[1], id)
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    if record then table.insert(records, record) end
  end
end
return records
"""

# KEYS: items, ready, owners, dead, finished. ARGV: owner, id, dead letter, ttl s.
_BURY = """
if redis.call('HGET', KEYS[3], ARGV[2]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[4]))
return 1
"""

# KEYS: the drain flag. ARGV: countdown ms, slack ms. 1 (and the flag set to
# the new drain's start) when no drain is due to start within slack of when
# one is wanted, else 0.
_WANT_DRAIN = _NOW + """
local due = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if current >= 0 and current <= due + tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], due, 'PX', tonumber(ARGV[1]) + 60000)
return 1
"""

# KEYS: items, ready, owners. Makes due now what an outage put off: those
# waiting (no lease) whose last error was Klaviyo failing (5xx, a timeout, no
# connection: no status or one of 500 and up); how many.
_BRING_FORWARD = _NOW + """
local moved = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
  if redis.call('HEXISTS', KEYS[3], id) == 0 then
    local raw = redis.call('HGET', KEYS[1], id)
    if raw then
      local failed = cjson.decode(raw)['last_error']
      if type(failed) == 'table' and failed['isolated'] == nil then
        local status = failed['status']
        if type(status) ~= 'number' or status >= 500 then
          redis.call('ZADD', KEYS[2], now, id)
          moved = moved + 1
        end
      end
    end
  end
end
return moved
"""

# KEYS: ready. Milliseconds until the first pooled submission may be claimed, or -1.
_NEXT_DUE = _NOW + """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return -1 end
local wait = tonumber(first[2]) - now
if wait < 0 then return 0 end
return wait
"""


class RedisPool(SharedCapacity, PersonTurns):
    """Pooled submissions of one account, leased to drain tasks.

    Implements :class:`~klaviyo_middleware.delivery.courier.LeaseStore`; the
    pause, the rate limits and the people's turns are the ones single-task
    delivery uses, in ``state``.
    """

    def __init__(self, state: RedisState,
                 hand_back: Callable[[Submission, Progress], bool] | None = None) -> None:
        self.state = state
        # Puts a submission back on the broker's queue (True if it took it):
        # where what Klaviyo's refusal of the key holds waits (see reschedule).
        self.hand_back = hand_back
        self.redis = state.redis
        self._items = state.key("pool", "items")
        self._ready = state.key("pool", "ready")
        self._owners = state.key("pool", "owners")
        self._drain_flag = state.key("pool", "drain")
        self._scripts = {name: self.redis.register_script(source) for name, source in {
            "add": _ADD, "claim": _CLAIM, "save": _SAVE, "complete": _COMPLETE,
            "reschedule": _RESCHEDULE, "bury": _BURY, "next_due": _NEXT_DUE,
            "want_drain": _WANT_DRAIN, "bring_forward": _BRING_FORWARD, "release": _RELEASE,
            "take_unleased": _TAKE_UNLEASED,
        }.items()}

    def __repr__(self) -> str:
        return f"<RedisPool {self._items!r}>"

    @property
    def _keys(self) -> list[str]:
        return [self._items, self._ready, self._owners]

    # -- filling and claiming ---------------------------------------------------

    def add(self, submission: Submission, progress: Progress, attempts: int,
            created_at: float, due_at: float = 0.0,
            error: dict[str, Any] | None = None) -> bool:
        """Pool a submission (idempotent), due at ``due_at`` (default: now);
        ``False`` if it was already here. ``error``: why it waits."""
        record = _record(Leased(submission, progress, attempts, created_at), error)
        keys = [self._items, self._ready, self.state.key("progress", submission.id)]
        return bool(self._scripts["add"](
            keys=keys, args=[submission.id, record, int(created_at * 1000),
                             int(due_at * 1000)]))

    def bring_forward(self) -> int:
        """Klaviyo answers again after an outage: what its failures put off
        is due now, all together, to go out in bulk (as the spool's)."""
        return int(self._scripts["bring_forward"](keys=self._keys))

    def forget(self, email: str | None, phone_number: str | None) -> int:
        """Take every pooled submission about a person out of the pool; how many."""
        found = [key for key, raw in self.redis.hgetall(self._items).items()
                 if is_about(json.loads(raw)["submission"], email, phone_number)]
        if found:
            pipe = self.redis.pipeline()
            pipe.hdel(self._items, *found)
            pipe.zrem(self._ready, *found)
            pipe.hdel(self._owners, *found)
            pipe.execute()
        return len(found)

    def holds(self, submission_id: str) -> bool:
        return bool(self.redis.hexists(self._items, submission_id))

    def claim(self, owner: str, limit: int, lease: float, ahead: float = 0.0) -> list[Leased]:
        """Lease up to ``limit`` due submissions to ``owner``, oldest first.

        ``ahead`` also takes those due within that many seconds: the members
        of a failed bulk call fall due a few milliseconds apart, and a drain
        that starts on the first should retry them together.
        """
        if limit <= 0:
            return []
        records = self._scripts["claim"](
            keys=self._keys, args=[owner, limit, _milliseconds(lease), int(ahead * 1000)])
        claimed = [_claimed(json.loads(record)) for record in records]
        claimed.sort(key=lambda item: (item.submission.accepted_at, item.created_at))
        return claimed

    def size(self) -> int:
        return int(self.redis.hlen(self._items))

    def next_due_in(self) -> float | None:
        """Seconds until a pooled submission may be claimed; ``None`` when empty."""
        wait = int(self._scripts["next_due"](keys=[self._ready]))
        return None if wait < 0 else wait / 1000

    # -- the drain flag ---------------------------------------------------------

    def want_drain(self, within: float) -> bool:
        """Claim the duty of enqueueing a drain to start in ``within`` seconds.

        ``False`` when one is already due by then (give or take a second).
        A drain due later — a successor counting down to a retry ten minutes
        away — does not count: a backlog arriving now gets its own drain.
        The flag outlives the countdown by a minute, so that a drain slow to
        start does not hold back the next one for ever; two drains only
        share the leases.
        """
        return bool(self._scripts["want_drain"](
            keys=[self._drain_flag], args=[int(within * 1000), 1000]))

    def drain_started(self) -> None:
        """A drain is running; the next submission pooled may enqueue another."""
        self.redis.delete(self._drain_flag)

    # -- LeaseStore ---------------------------------------------------------------

    def save_progress_many(self, owner: str, items: list[Leased], lease: float) -> set[str]:
        if not items:
            return set()
        arguments: list[Any] = [owner, _milliseconds(lease)]
        for item in items:
            arguments += [item.submission.id, _record(item)]
        kept = self._scripts["save"](keys=self._keys, args=arguments)
        saved = {value.decode() if isinstance(value, bytes) else value for value in kept}
        self.after_saving(owner, [item for item in items if item.submission.id in saved], lease)
        return saved

    def complete_many(self, owner: str, items: list[Leased]) -> None:
        self.after_saving(owner, items, 0.001)
        if items:
            self._scripts["complete"](
                keys=[*self._keys, self.state.key("finished"), self.state.key("delivered")],
                args=[owner, PROGRESS_TTL, *[item.submission.id for item in items]],
            )

    def hand_back_all(self, batch: int = 200, most: int = 100_000) -> int:
        """Klaviyo refused the key: every pooled submission nobody leases goes
        back on the broker's queue (see :meth:`reschedule`), in batches so
        that no script holds Redis long; how many."""
        if self.hand_back is None:
            return 0
        moved = 0
        while moved < most:
            records = self._scripts["take_unleased"](keys=self._keys, args=[batch])
            if not records:
                break
            for record in records:
                item = _claimed(json.loads(record))
                if not self.hand_back(item.submission, item.progress):
                    self.add(item.submission, item.progress, item.attempts, item.created_at)
                    return moved
                moved += 1
        return moved

    def reschedule(self, owner: str, claimed: Leased, due_at: float,
                   error: dict[str, Any]) -> None:
        if held_for_the_key(error):
            if self.state.note_key_refused(KEY_RECHECK):
                self.hand_back_all()
            if self.hand_back is not None and self._scripts["release"](
                    keys=self._keys, args=[owner, claimed.submission.id]):
                # Klaviyo refused the key: the pool is the key's (its Redis
                # keys carry its fingerprint), the broker's queue is not, so
                # a worker restarted with the key put right delivers it there.
                self.let_go(owner, claimed)
                if self.hand_back(claimed.submission, claimed.progress):
                    return
                self.add(claimed.submission, claimed.progress, claimed.attempts + 1,
                         claimed.created_at, due_at, error)
                return
        self.let_go(owner, claimed)
        retried = Leased(claimed.submission, claimed.progress, claimed.attempts + 1,
                          claimed.created_at)
        self._scripts["reschedule"](keys=self._keys, args=[
            owner, claimed.submission.id, _record(retried, error),
            _milliseconds(max(0.0, due_at - time.time())),
        ])

    def postpone(self, owner: str, claimed: Leased, due_at: float) -> None:
        self.let_go(owner, claimed)
        self._scripts["reschedule"](keys=self._keys, args=[
            owner, claimed.submission.id, _record(claimed),
            _milliseconds(max(0.0, due_at - time.time())),
        ])

    def bury(self, owner: str, claimed: Leased, error: dict[str, Any]) -> None:
        self.let_go(owner, claimed)
        letter = self.state.dead_letter(claimed.submission, claimed.progress, error,
                                        claimed.attempts + 1)
        self._scripts["bury"](
            keys=[*self._keys, self.state.key("dead"), self.state.key("finished")],
            args=[owner, claimed.submission.id, letter, PROGRESS_TTL],
        )


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _record(item: Leased, error: dict[str, Any] | None = None) -> str:
    return json.dumps({
        "submission": item.submission.to_dict(),
        "progress": item.progress.to_dict(),
        "attempts": item.attempts,
        "created_at": item.created_at,
        "last_error": error,
    }, separators=(",", ":"))


def _claimed(record: dict[str, Any]) -> Leased:
    return Leased(
        Submission.from_dict(record["submission"]),
        Progress.from_dict(record["progress"]),
        int(record["attempts"]),
        float(record["created_at"]),
    )
