"""A dead letter, whichever backend kept it: the submission, how far it got, why it stopped.

The spool keeps dead letters in SQLite rows, a Celery fleet in Redis as
JSON; both read back into :class:`DeadLetter`, so that the operator's
commands show them alike (``klaviyo-middleware spool dead``, ``celery dead``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from klaviyo_middleware.model.progress import Progress
from klaviyo_middleware.model.submission import Submission


@dataclass
class DeadLetter:
    id: str
    # None when the stored submission can no longer be read (another
    # version wrote it, or it is damaged): shown, never lost.
    submission: Submission | None
    progress: Progress
    attempts: int
    created_at: float
    dead_at: float
    error: dict[str, Any]

    @property
    def email(self) -> str:
        if self.submission is None:
            return ""
        return str(self.submission.profile.get("email", ""))

    @classmethod
    def read(cls, letter_id: str, submission: Any, progress: Any, attempts: int,
             created_at: float, dead_at: float, error: dict[str, Any]) -> DeadLetter:
        """From what a backend stored (plain dicts), tolerating what it cannot read."""
        readable: Submission | None
        try:
            readable = Submission.from_dict(submission)
        except Exception:
            readable = None
        try:
            done = Progress.from_dict(progress)
        except Exception:
            done = Progress()
        return cls(letter_id, readable, done, attempts, created_at, dead_at, error)


def relisted(submission: dict[str, Any], old: str, new: str) -> dict[str, Any] | None:
    """A stored submission sent to list ``new`` wherever it named ``old``
    (a list id that does not exist, put right by the operator); ``None``
    when it does not name ``old``. Its other lists keep their order."""
    lists = submission.get("lists")
    if not isinstance(lists, list) or old not in lists:
        return None
    changed: list[Any] = []
    for list_id in lists:
        replaced = new if list_id == old else list_id
        if replaced not in changed:
            changed.append(replaced)
    return {**submission, "lists": changed}
