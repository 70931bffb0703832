"""Which steps of a submission Klaviyo has accepted: saved beside it, so that a
delivery resumed anywhere (another thread, process or Celery worker) never
sends an accepted step again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    done: list[str] = field(default_factory=list)
    profile_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"done": list(self.done), "profile_id": self.profile_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(done=list(data.get("done", [])), profile_id=data.get("profile_id"))
