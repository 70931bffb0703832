"""Delivery state shared by every Celery worker, in Redis.

The spool keeps this in SQLite for one machine; a fleet keeps it here:
per-submission step progress (so a re-delivered task never repeats a step
Klaviyo accepted), the account-wide pause after a 429, Klaviyo's rate limits
as atomic sliding windows (a Lua script, so any number of workers on any
number of machines stay within them), dead letters and counters. Keys are
prefixed with the account fingerprint, as the spool's rows are.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import redis
from redis.commands.core import Script

from klaviyo_middleware.klaviyo.limits import RateLimits
from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission, is_about
from klaviyo_middleware.redact import get_logger

log = get_logger(__name__)

PROGRESS_TTL = 14 * 24 * 3600

# KEYS[1]: the endpoint's sorted set of call times (ms).
# ARGV: member, then (window ms, limit) pairs. Returns 0 and records the call,
# or the milliseconds until the call may be made.
_TAKE_SLOT = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local longest = 0
local wait = 0
for i = 2, #ARGV, 2 do
  local window = tonumber(ARGV[i])
  local limit = tonumber(ARGV[i + 1])
  if window > longest then longest = window end
  local inside = redis.call('ZRANGEBYSCORE', KEYS[1], now - window, '+inf', 'WITHSCORES')
  local count = #inside / 2
  if count >= limit then
    local oldest = tonumber(inside[(count - limit) * 2 + 2])
    local until_free = oldest + window - now
    if until_free > wait then wait = until_free end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
if wait > 0 then return wait end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], longest)
return 0
"""


def accounts_in(connection: redis.Redis) -> list[str]:
    """The accounts (API key fingerprints) that have state in this Redis."""
    # Account fingerprints only: the ledger's keys share the namespace.
    return sorted({part for key in connection.scan_iter("klaviyo_middleware:*:*")
                   if re.fullmatch("[0-9a-f]{16}", part := key.decode().split(":")[1])})


class RedisState:
    def __init__(self, url: str, account: str) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(url)
        self.account = account
        self.prefix = f"klaviyo_middleware:{account}:"
        self._take_slot = self.redis.register_script(_TAKE_SLOT)
        self._scripts: dict[str, Script] = {}

    def __repr__(self) -> str:
        return f"<RedisState {self.prefix!r}>"

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def script(self, source: str) -> Script:
        """A Lua script, registered once for this state's connection."""
        found = self._scripts.get(source)
        if found is None:
            found = self._scripts[source] = self.redis.register_script(source)
        return found

    # -- progress -----------------------------------------------------------------

    def load_progress(self, submission_id: str) -> Progress:
        raw = self.redis.get(self.key("progress", submission_id))
        return Progress.from_dict(json.loads(raw)) if raw else Progress()

    def save_progress(self, submission_id: str, progress: Progress) -> None:
        self.redis.set(self.key("progress", submission_id), json.dumps(progress.to_dict()),
                       ex=PROGRESS_TTL)

    def complete(self, submission_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self.key("progress", submission_id))
        pipe.incr(self.key("delivered"))
        pipe.execute()

    def is_finished(self, submission_id: str) -> bool:
        """Whether the submission was already delivered or dead-lettered."""
        return bool(self.redis.sismember(self.key("finished"), submission_id))

    def is_dead(self, submission_id: str) -> bool:
        """Whether the submission is among the dead letters."""
        return bool(self.redis.hexists(self.key("dead"), submission_id))

    def mark_finished(self, submission_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.sadd(self.key("finished"), submission_id)
        pipe.expire(self.key("finished"), PROGRESS_TTL)
        pipe.execute()

    def unfinish(self, submission_id: str) -> None:
        """A dead letter sent again: its task must run, not find it finished."""
        self.redis.srem(self.key("finished"), submission_id)

    # -- pause and rate limits ----------------------------------------------------------

    def pause(self, seconds: float) -> None:
        milliseconds = max(1, int(seconds * 1000))
        current = self.redis.pttl(self.key("pause"))
        if current < milliseconds:
            self.redis.set(self.key("pause"), "1", px=milliseconds)

    def paused_for(self) -> float:
        remaining = self.redis.pttl(self.key("pause"))
        return max(0.0, remaining / 1000) if remaining and remaining > 0 else 0.0

    def take_turn(self, task: str, every: float) -> bool:
        """Whether this worker should do ``task`` now: ``True`` for one
        worker of the fleet at most once every ``every`` seconds."""
        return bool(self.redis.set(self.key("turn", task), "1", px=max(1, int(every * 1000)),
                                   nx=True))

    def turn_free_in(self, task: str) -> float:
        """Seconds until someone may take the turn at ``task``; 0 when free."""
        remaining = self.redis.pttl(self.key("turn", task))
        return max(0.0, remaining / 1000) if remaining and remaining > 0 else 0.0

    # -- Klaviyo failing -------------------------------------------------------------

    def note_key_refused(self, seconds: float) -> bool:
        """Klaviyo refused the account's key: say so fleet-wide for
        ``seconds`` (a task meeting it holds its submission in the broker,
        not the pool). ``True`` when it was not known already."""
        pipe = self.redis.pipeline()
        pipe.set(self.key("key_refused"), "1", nx=True)
        pipe.expire(self.key("key_refused"), max(1, int(seconds)))
        new, _ = pipe.execute()
        return bool(new)

    def key_refused(self) -> bool:
        return bool(self.redis.exists(self.key("key_refused")))

    def note_outage(self, now: float) -> None:
        """Klaviyo failed (5xx, a timeout, no connection): remember since
        when, fleet-wide, for an hour after the last failure."""
        pipe = self.redis.pipeline()
        pipe.set(self.key("outage"), repr(now), nx=True)
        pipe.expire(self.key("outage"), 3600)
        pipe.execute()

    def outage_since(self) -> float | None:
        value = self.redis.get(self.key("outage"))
        return float(value) if value is not None else None

    def end_outage(self) -> float | None:
        """Klaviyo answered: since when it had not, if it had not."""
        value = self.redis.getdel(self.key("outage"))
        return float(value) if value is not None else None

    def take_rate_slot(self, endpoint: str, limits: RateLimits) -> float:
        """0 when a call to ``endpoint`` may go now (and counts it), else seconds to wait."""
        arguments: list[Any] = [uuid.uuid4().hex]
        for window, limit in limits:
            arguments += [int(window * 1000), limit]
        wait = self._take_slot(keys=[self.key("rate", endpoint)], args=arguments)
        return int(wait) / 1000

    # -- dead letters ----------------------------------------------------------------

    @staticmethod
    def dead_letter(submission: Submission, progress: Progress, error: dict[str, Any],
                    attempts: int) -> str:
        """A dead letter as stored (the Redis pool buries in the same form)."""
        return json.dumps({
            "submission": submission.to_dict(),
            "progress": progress.to_dict(),
            "error": error,
            "attempts": attempts,
            "dead_at": time.time(),
        })

    def bury(self, submission: Submission, progress: Progress, error: dict[str, Any],
             attempts: int) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(self.key("dead"), submission.id,
                  self.dead_letter(submission, progress, error, attempts))
        pipe.delete(self.key("progress", submission.id))
        pipe.execute()

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self.redis.hgetall(self.key("dead"))
        letters = [
            dict(json.loads(value), id=key.decode() if isinstance(key, bytes) else key)
            for key, value in rows.items()
        ]
        return sorted(letters, key=lambda letter: letter["dead_at"])

    def take_dead(self, ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Remove dead letters (all, or ``ids``) and return them, for a retry."""
        letters = [letter for letter in self.dead_letters() if ids is None or letter["id"] in ids]
        if letters:
            self.redis.hdel(self.key("dead"), *[letter["id"] for letter in letters])
        return letters

    def expire_dead_letters(self, max_age: float, now: float | None = None) -> int:
        """Delete dead letters older than ``max_age`` seconds."""
        cutoff = (time.time() if now is None else now) - max_age
        old = [letter["id"] for letter in self.dead_letters() if letter["dead_at"] <= cutoff]
        if old:
            self.redis.hdel(self.key("dead"), *old)
            log.info("klaviyo_middleware: purged %d dead letters older than %s days",
                     len(old), f"{max_age / 86400:g}")
        return len(old)

    def forget(self, email: str | None, phone_number: str | None) -> int:
        """Delete the dead letters about a person; how many."""
        found = [letter["id"] for letter in self.dead_letters()
                 if is_about(letter["submission"], email, phone_number)]
        if found:
            self.redis.hdel(self.key("dead"), *found)
        return len(found)

    def stats(self) -> dict[str, Any]:
        return {
            "delivered": int(self.redis.get(self.key("delivered")) or 0),
            "dead": int(self.redis.hlen(self.key("dead"))),
            "paused_for": self.paused_for(),
        }


class SharedCapacity:
    """The account-wide pause and rate limits of a Redis lease store: the
    fleet's, kept in :attr:`state` (part of the courier's ``LeaseStore``)."""

    state: RedisState

    def pause(self, seconds: float) -> None:
        self.state.pause(seconds)

    def paused_for(self) -> float:
        return self.state.paused_for()

    def take_rate_slot(self, endpoint: str, limits: RateLimits) -> float:
        return self.state.take_rate_slot(endpoint, limits)

    def note_outage(self, now: float) -> None:
        self.state.note_outage(now)

    def outage_since(self) -> float | None:
        return self.state.outage_since()

    def end_outage(self) -> float | None:
        return self.state.end_outage()
