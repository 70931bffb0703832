"""What the fake Klaviyo knows: profiles, lists, consent, events, bulk jobs.

The semantics follow Klaviyo's documentation (design.md §4): profiles are
upserted by any identifier; a subscription to a double opt-in list stays
pending until the person confirms; add-to-list changes no consent; events
are kept once per ``unique_id`` for a profile and metric.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

IDENTIFIERS = ("email", "phone_number", "external_id")
_MERGED = ("location", "properties")


def _new_id() -> str:
    # Klaviyo ids are 26-character ULIDs; the shape is what matters here.
    return "01" + secrets.token_hex(12).upper()


@dataclass
class FakeList:
    id: str
    name: str
    opt_in_process: str = "single_opt_in"
    members: set[str] = field(default_factory=set)
    # channel ("email", "sms") → ids of profiles that consented through this list.
    subscribers: dict[str, set[str]] = field(default_factory=dict)

    def consented(self, profile_id: str, channels: tuple[str, ...]) -> None:
        self.members.add(profile_id)
        for channel in channels:
            self.subscribers.setdefault(channel, set()).add(profile_id)


@dataclass
class Confirmation:
    token: str
    profile_id: str
    list_id: str
    custom_source: str | None
    # "email", "sms": the channels the person is asked to confirm.
    channels: tuple[str, ...] = ("email",)


class KlaviyoState:
    """Thread-safe in-memory account state."""

    def __init__(self, lists: dict[str, str] | None = None, auto_create_lists: bool = True):
        self.lock = threading.RLock()
        self.profiles: dict[str, dict[str, Any]] = {}
        self.lists: dict[str, FakeList] = {}
        self.consent: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        # Jobs not yet processed, oldest first: every request looks at these only.
        self._queued: list[dict[str, Any]] = []
        # identifier → why profiles with it are refused (see refuse()).
        self.refused: dict[str, str] = {}
        self.confirmations: dict[str, Confirmation] = {}
        self.auto_create_lists = auto_create_lists
        self._event_keys: set[tuple[str, str, str]] = set()
        # (identifier name, value) → profile id, so that upserts stay O(1).
        self._index: dict[tuple[str, Any], str] = {}
        for list_id, opt_in in (lists or {}).items():
            self.add_list(list_id, opt_in_process=opt_in)

    # -- lists ----------------------------------------------------------------

    def add_list(self, list_id: str, name: str | None = None,
                 opt_in_process: str = "single_opt_in") -> FakeList:
        with self.lock:
            created = FakeList(list_id, name or f"List {list_id}", opt_in_process)
            self.lists[list_id] = created
            return created

    def find_list(self, list_id: str) -> FakeList | None:
        with self.lock:
            found = self.lists.get(list_id)
            if found is None and self.auto_create_lists:
                found = self.add_list(list_id)
            return found

    # -- profiles -------------------------------------------------------------

    def find_profile(self, attributes: dict[str, Any], profile_id: str | None = None) -> str | None:
        with self.lock:
            if profile_id and profile_id in self.profiles:
                return profile_id
            for name in IDENTIFIERS:
                value = attributes.get(name)
                if value and (name, value) in self._index:
                    return self._index[(name, value)]
            return None

    def upsert_profile(self, attributes: dict[str, Any],
                       profile_id: str | None = None) -> tuple[str, bool]:
        """Create or update; ``(id, created)``. ``None`` clears, absent keeps."""
        with self.lock:
            found = self.find_profile(attributes, profile_id)
            created = found is None
            target_id = found or _new_id()
            profile = self.profiles.setdefault(target_id, {"created": _now()})
            for key, value in attributes.items():
                if key in _MERGED and isinstance(value, dict):
                    merged = dict(profile.get(key) or {})
                    merged.update(copy.deepcopy(value))
                    profile[key] = merged
                elif value is None:
                    profile.pop(key, None)
                else:
                    profile[key] = copy.deepcopy(value)
            profile["updated"] = _now()
            for name in IDENTIFIERS:
                if profile.get(name):
                    self._index[(name, profile[name])] = target_id
            return target_id, created

    # -- lists and consent -----------------------------------------------------

    def subscribe(self, list_id: str | None, attributes: dict[str, Any],
                  custom_source: str | None) -> Confirmation | None:
        """Marketing consent on the channels asked for (``subscriptions``):
        email for an address, SMS for a phone number; pending on a double
        opt-in list."""
        with self.lock:
            identity = {key: attributes[key] for key in ("email", "phone_number")
                        if attributes.get(key)}
            asked = attributes.get("subscriptions") or {}
            channels = tuple(channel for channel, needs in (("email", "email"),
                                                            ("sms", "phone_number"))
                             if channel in asked and identity.get(needs))
            profile_id, _ = self.upsert_profile(identity)
            target = self.find_list(list_id) if list_id else None
            if target is not None and target.opt_in_process == "double_opt_in":
                token = secrets.token_urlsafe(16)
                confirmation = Confirmation(token, profile_id, target.id, custom_source,
                                            channels)
                self.confirmations[token] = confirmation
                self._set_consent(profile_id, "PENDING", target.id, custom_source, channels)
                return confirmation
            self._set_consent(profile_id, "SUBSCRIBED",
                              target.id if target else None, custom_source, channels)
            if target is not None:
                target.consented(profile_id, channels)
            return None

    def confirm(self, token: str) -> bool:
        with self.lock:
            confirmation = self.confirmations.pop(token, None)
            if confirmation is None:
                return False
            self._set_consent(confirmation.profile_id, "SUBSCRIBED", confirmation.list_id,
                              confirmation.custom_source, confirmation.channels,
                              double_opt_in=True)
            self.lists[confirmation.list_id].consented(confirmation.profile_id,
                                                       confirmation.channels)
            return True

    def _set_consent(self, profile_id: str, status: str, list_id: str | None,
                     custom_source: str | None, channels: tuple[str, ...],
                     double_opt_in: bool = False) -> None:
        record = self.consent.setdefault(profile_id, {})
        for channel in channels:
            record[f"{channel}_marketing"] = status
        record.update({
            "list": list_id,
            "custom_source": custom_source,
            "double_opt_in": double_opt_in,
            "at": _now(),
        })

    def add_members(self, list_id: str, profile_ids: list[str]) -> None:
        with self.lock:
            target = self.find_list(list_id)
            if target is not None:
                target.members.update(profile_ids)

    # -- events ---------------------------------------------------------------

    def add_event(self, attributes: dict[str, Any]) -> bool:
        """Record an event; ``False`` when its ``unique_id`` was already seen."""
        with self.lock:
            profile = attributes["profile"]["data"]
            profile_id, _ = self.upsert_profile(profile.get("attributes", {}), profile.get("id"))
            metric = attributes["metric"]["data"]["attributes"]["name"]
            unique_id = attributes.get("unique_id") or f"{metric}@{attributes.get('time')}"
            key = (profile_id, metric, unique_id)
            if key in self._event_keys:
                return False
            self._event_keys.add(key)
            self.events.append({
                "profile_id": profile_id,
                "metric": metric,
                "unique_id": unique_id,
                "time": attributes.get("time") or _now(),
                "value": attributes.get("value"),
                "value_currency": attributes.get("value_currency"),
                "properties": copy.deepcopy(attributes.get("properties", {})),
            })
            return True

    # -- refusals and bulk jobs ---------------------------------------------------

    def refuse(self, identifier: str, detail: str = "This profile cannot be imported.") -> None:
        """Refuse every profile with this email address, phone number or
        external id: a single import answers 400, a bulk job fails it alone
        (and reports it in ``import-errors``), as Klaviyo does with a
        suppressed or malformed profile."""
        with self.lock:
            self.refused[identifier] = detail

    def refusal(self, attributes: dict[str, Any]) -> str | None:
        """Why a profile with these attributes is refused; ``None`` if it is not."""
        with self.lock:
            for name in IDENTIFIERS:
                value = attributes.get(name)
                if isinstance(value, str) and value in self.refused:
                    return self.refused[value]
            return None

    def add_job(self, kind: str, profiles: list[dict[str, Any]], lists: list[str],
                errors: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        """A profile import job, processed ``seconds`` from now (Klaviyo works
        through jobs in the background: until then nothing of it shows).

        ``profiles`` are the job's entries still to import, each
        ``{"index": position in the request, "profile": profile object}``;
        ``errors`` those refused on arrival.
        """
        with self.lock:
            job_id = _new_id()
            total = len(profiles) + len(errors)
            job: dict[str, Any] = {
                "type": kind,
                "id": job_id,
                "attributes": {
                    "status": "queued",
                    "total_count": total,
                    "completed_count": 0,
                    "failed_count": 0,
                    "created_at": _now(),
                    "completed_at": None,
                },
                "errors": list(errors),
                "work": {"profiles": profiles, "lists": lists},
                "due": time.monotonic() + seconds,
            }
            self.jobs[job_id] = job
            self._queued.append(job)
            return job

    def process_jobs(self) -> None:
        """Finish every job whose time has come, in the order they arrived."""
        now = time.monotonic()
        with self.lock:
            for job in [job for job in self._queued if job["due"] <= now]:
                self._process(job)
                self._queued.remove(job)

    def _process(self, job: dict[str, Any]) -> None:
        work = job.pop("work")
        imported = []
        for entry in work["profiles"]:
            attributes = entry["profile"].get("attributes", {})
            refused = self.refusal(attributes)
            if refused is not None:
                job["errors"].append(import_error(
                    "invalid", refused, f"/data/attributes/profiles/data/{entry['index']}",
                    entry["profile"]))
                continue
            imported.append(self.upsert_profile(attributes)[0])
        for list_id in work["lists"]:
            self.add_members(list_id, imported)
        failed = len(job["errors"])
        job["attributes"].update(status="complete", completed_count=job["attributes"][
            "total_count"] - failed, failed_count=failed, completed_at=_now())

    # -- reading it all --------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            self.process_jobs()
            return {
                "profiles": [{"id": pid, **copy.deepcopy(p)} for pid, p in self.profiles.items()],
                "lists": [
                    {"id": item.id, "name": item.name, "opt_in_process": item.opt_in_process,
                     "members": sorted(item.members),
                     "subscribers": {channel: sorted(ids)
                                     for channel, ids in item.subscribers.items()}}
                    for item in self.lists.values()
                ],
                "consent": copy.deepcopy(self.consent),
                "pending_confirmations": [
                    {"token": c.token, "profile_id": c.profile_id, "list_id": c.list_id,
                     "channels": list(c.channels)}
                    for c in self.confirmations.values()
                ],
                "events": copy.deepcopy(self.events),
                "jobs": [
                    {"id": job["id"], "type": job["type"], **job["attributes"]}
                    for job in self.jobs.values()
                ],
            }

    def reset(self) -> None:
        """Forget people, consent, events and jobs; keep the lists' settings."""
        with self.lock:
            self.profiles.clear()
            self.consent.clear()
            self.events.clear()
            self.jobs.clear()
            self._queued.clear()
            self.confirmations.clear()
            self._event_keys.clear()
            self._index.clear()
            for item in self.lists.values():
                item.members.clear()
                item.subscribers.clear()


def import_error(code: str, detail: str, pointer: str,
                 original: dict[str, Any]) -> dict[str, Any]:
    """One entry of a job's ``import-errors``, as Klaviyo reports it."""
    return {"type": "import-error", "id": secrets.token_hex(16), "attributes": {
        "code": code, "title": "Invalid input", "detail": detail,
        "source": {"pointer": pointer}, "original_payload": copy.deepcopy(original)}}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
