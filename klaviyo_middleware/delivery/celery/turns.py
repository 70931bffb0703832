"""Per-person order for Celery workers, in Redis (model/profile_order.py).

A Celery fleet has no one table of what waits: tasks sit in the broker, the
backlog in the Redis pool. So the order is kept with two keys per person
(hashed, salted with the account):

- ``person:<hash>:hold`` — who is sending the person's profile right now
  (the task, or the drain whose round may carry several of the person's
  submissions, ordered within it), expiring with the lease: a worker that
  dies while holding it blocks nobody for longer than that;
- ``person:<hash>:marks`` — for each attribute path, the acceptance stamp of
  the newest submission that sent it, kept for the retry window, so that an
  older submission retried later leaves those attributes alone.

A submission whose person is held waits (its task is retried a moment
later, its pooled entry comes due again); one that holds nobody's turn sends
what is still its own to send.
"""

from __future__ import annotations

from klaviyo_middleware.delivery.celery.state import RedisState
from klaviyo_middleware.klaviyo.account import DEFAULT_RETRY_MAX_AGE
from klaviyo_middleware.klaviyo.steps import PROFILE_STEP
from klaviyo_middleware.model.lease import Leased
from klaviyo_middleware.model.profile_order import Turn, attribute_paths, person_hashes

# How long marks are kept: as long as an older submission may still be retried.
MARKS_TTL = int(DEFAULT_RETRY_MAX_AGE)

# KEYS: n holds, then n marks. ARGV: owner, lease ms. {wait ms} when another
# owner holds one of the people (a second at most: look again soon); else the
# holds are taken and the answer is {0, path, stamp, ...} from every marks hash.
_TAKE = """
local n = #KEYS / 2
for i = 1, n do
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= ARGV[1] then
    return {math.min(1000, math.max(1, redis.call('PTTL', KEYS[i])))}
  end
end
local answer = {0}
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', tonumber(ARGV[2]))
  local marks = redis.call('HGETALL', KEYS[n + i])
  for j = 1, #marks do table.insert(answer, marks[j]) end
end
return answer
"""

# KEYS: n holds, then n marks. ARGV: owner, stamp, ttl s, paths... Records the
# paths as sent at ``stamp`` (a newer stamp stays) and lets go of the holds.
_SENT = """
local n = #KEYS / 2
local stamp = tonumber(ARGV[2])
for i = 1, n do
  for j = 4, #ARGV do
    local current = tonumber(redis.call('HGET', KEYS[n + i], ARGV[j]) or '-1')
    if stamp > current then redis.call('HSET', KEYS[n + i], ARGV[j], ARGV[2]) end
  end
  if #ARGV >= 4 then redis.call('EXPIRE', KEYS[n + i], tonumber(ARGV[3])) end
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
"""

# KEYS: holds. ARGV: owner, lease ms (0: let go). Keeps the holds for another
# lease while the profile is on its way, or lets go without recording anything.
_KEEP = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]))
    else redis.call('DEL', KEYS[i]) end
  end
end
return 1
"""


class PersonTurns:
    """Per-person order for a Redis lease store (part of its ``LeaseStore``)."""

    state: RedisState

    def take_profile_turns(self, owner: str, items: list[Leased],
                           lease: float) -> dict[str, Turn]:
        turns = {}
        for item in items:
            people = self._people(item)
            if not people:
                turns[item.submission.id] = Turn()
                continue
            answer = self.state.script(_TAKE)(
                keys=[*self._holds(people), *self._marks(people)],
                args=[owner, max(1, int(lease * 1000))])
            if int(answer[0]) > 0:
                turns[item.submission.id] = Turn(wait=int(answer[0]) / 1000)
                continue
            item.holding = True
            marks: dict[str, int] = {}
            for path, stamp in zip(answer[1::2], answer[2::2], strict=True):
                name = path.decode() if isinstance(path, bytes) else str(path)
                marks[name] = max(marks.get(name, -1), int(stamp))
            turns[item.submission.id] = Turn(0.0, marks)
        return turns

    def after_saving(self, owner: str, items: list[Leased], lease: float) -> None:
        """Progress was saved: once a held profile is in, record what it
        sent and let go; until then keep the hold as long as the lease."""
        for item in items:
            if not item.holding:
                continue
            people = self._people(item)
            if PROFILE_STEP in item.progress.done:
                self.state.script(_SENT)(
                    keys=[*self._holds(people), *self._marks(people)],
                    args=[owner, item.submission.accepted_at, MARKS_TTL,
                          *attribute_paths(item.submission.profile)])
                item.holding = False
            else:
                self.state.script(_KEEP)(keys=self._holds(people),
                                         args=[owner, max(1, int(lease * 1000))])

    def let_go(self, owner: str, item: Leased) -> None:
        """The submission stops (retried later, or dead): free its person."""
        if item.holding:
            self.state.script(_KEEP)(keys=self._holds(self._people(item)), args=[owner, 0])
            item.holding = False

    def forget_person(self, email: str | None, phone_number: str | None) -> int:
        """Delete a person's holds and marks (an erasure request); how many keys."""
        people = person_hashes(self.state.account,
                               {"email": email, "phone_number": phone_number})
        keys = [*self._holds(people), *self._marks(people)]
        return int(self.state.redis.delete(*keys)) if keys else 0

    # -- keys -------------------------------------------------------------------

    def _people(self, item: Leased) -> list[str]:
        return person_hashes(self.state.account, item.submission.profile)

    def _holds(self, people: list[str]) -> list[str]:
        return [self.state.key("person", person, "hold") for person in people]

    def _marks(self, people: list[str]) -> list[str]:
        return [self.state.key("person", person, "marks") for person in people]
