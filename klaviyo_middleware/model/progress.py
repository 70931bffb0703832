"""Which steps of a submission Klaviyo has accepted: saved beside it, so that a
delivery resumed anywhere (another thread, process or Celery worker) never
sends an accepted step again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImportJob:
    """The profile import job a submission's profile went out in: Klaviyo
    processes it later, so the profile step is done only once the job says
    so (see :mod:`klaviyo_middleware.delivery.import_jobs`)."""

    id: str
    # The profile's position in the job's request: how Klaviyo's import
    # errors point at it.
    index: int
    # When the job was started (epoch seconds): a job still unfinished long
    # after is given up and its profiles sent one by one.
    since: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "index": self.index, "since": self.since}


@dataclass
class Progress:
    done: list[str] = field(default_factory=list)
    profile_id: str | None = None
    job: ImportJob | None = None
    # How often a bulk call with it failed while other calls went through
    # (or failed again): twice, and it goes alone, one call a step, so that
    # whatever about it fails takes nobody with it.
    bulk_failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"done": list(self.done), "profile_id": self.profile_id}
        if self.job is not None:
            data["job"] = self.job.to_dict()
        if self.bulk_failures:
            data["bulk_failures"] = self.bulk_failures
        return data

    @property
    def alone(self) -> bool:
        """Whether it goes alone, not in bulk (see ``bulk_failures``)."""
        return self.bulk_failures >= 2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        job = data.get("job")
        return cls(done=list(data.get("done", [])), profile_id=data.get("profile_id"),
                   job=ImportJob(str(job["id"]), int(job["index"]), float(job["since"]))
                   if isinstance(job, dict) else None,
                   bulk_failures=_count(data.get("bulk_failures")))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
