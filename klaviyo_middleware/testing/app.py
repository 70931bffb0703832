"""``FakeKlaviyo``: a WSGI app that behaves like Klaviyo's server-side API.

It serves every call the middleware makes (design.md §2) plus the reads a test
wants (``GET /api/lists/{id}``, ``GET /api/profiles?filter=...``, bulk job
status), and two of its own: ``GET /_state`` (everything it knows, as JSON)
and ``GET /_confirm/{token}`` (the link in a double opt-in email).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from webob import Request, Response

from klaviyo_middleware.testing import checks
from klaviyo_middleware.testing.checks import ApiError
from klaviyo_middleware.testing.faults import Faults, RateLimiter
from klaviyo_middleware.testing.state import KlaviyoState, import_error

# The address the fake is being called at (set per request, read by _document).
_BASE: ContextVar[str] = ContextVar("klaviyo_fake_base", default="https://a.klaviyo.com")

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

Handler = Callable[["FakeKlaviyo", Request, re.Match[str]], Response]
_JSON_API = "application/vnd.api+json"
_FILTER = re.compile(r'^(equals|any)\((email|phone_number|external_id|id),\s*(.+)\)$')


class FakeKlaviyo:
    """Klaviyo's API in memory, for tests, demos and local development.

    :param api_key: the only private key accepted; any ``pk_`` key when ``None``.
    :param lists: ``{list_id: "single_opt_in" | "double_opt_in"}`` known at start;
        other list ids are created (single opt-in) on first use unless
        ``auto_create_lists`` is false, in which case they are 404.
    :param rate_limits: enforce Klaviyo's published per-endpoint limits.
    :param faults: failures to inject (error rate, latency, outages, scripted).
    :param job_seconds: how long a profile import job takes to process: until
        then its status is ``queued`` and none of its profiles show, as with
        Klaviyo, which works through jobs in the background (``inf``: never).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        lists: dict[str, str] | None = None,
        auto_create_lists: bool = True,
        rate_limits: bool = True,
        faults: Faults | None = None,
        job_seconds: float = 1.0,
    ) -> None:
        self.api_key = api_key
        self.job_seconds = job_seconds
        self.state = KlaviyoState(lists, auto_create_lists)
        self.limiter = RateLimiter(rate_limits)
        self.faults = faults or Faults()
        self.requests: list[tuple[str, str, int]] = []

    def __repr__(self) -> str:
        return "<FakeKlaviyo>"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        return self.respond(request)(environ, start_response)

    def respond(self, request: Request) -> Response:
        path = request.path_info
        # Where the fake is served, for the resources' self links.
        _BASE.set(request.application_url)
        self.state.process_jobs()
        response = self._own_pages(request, path)
        if response is None:
            response = self._api(request, path)
        with self.state.lock:
            self.requests.append((request.method, path, response.status_int))
        return response

    # -- the fake's own pages ----------------------------------------------------

    def _own_pages(self, request: Request, path: str) -> Response | None:
        if path == "/_state" and request.method == "GET":
            state = self.state.snapshot()
            state["requests"] = {"total": len(self.requests), "throttled": self.limiter.throttled}
            return Response(json=state)
        match = re.fullmatch(r"/_confirm/([A-Za-z0-9_-]+)", path)
        if match and request.method in ("GET", "POST"):
            if self.state.confirm(match.group(1)):
                return Response("Subscription confirmed.", content_type="text/plain")
            return Response("Unknown or used confirmation link.", status=404,
                            content_type="text/plain")
        return None

    # -- the API ------------------------------------------------------------------

    def _api(self, request: Request, path: str) -> Response:
        for method, pattern, endpoint, handler in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if request.method != method:
                continue
            try:
                checks.check_headers(request.headers, self.api_key)
                self.limiter.check(endpoint)
                self.faults.apply(path)
                if method == "POST":
                    checks.check_media_type(request.content_type or "")
                return handler(self, request, match)
            except ApiError as error:
                return _error(error)
        if any(pattern.fullmatch(path) for _, pattern, _, _ in _ROUTES):
            return _error(ApiError(405, "method_not_allowed", "Method not allowed."))
        return _error(ApiError(404, "not_found", f"No endpoint at {path}."))

    # -- handlers -----------------------------------------------------------------

    def profile_import(self, request: Request, match: re.Match[str]) -> Response:
        data = checks.resource(_body(request), "profile")
        checks.profile_attributes(data["attributes"], "/data/attributes")
        refused = self.state.refusal(data["attributes"])
        if refused is not None:
            raise ApiError(400, "invalid", refused, "/data/attributes")
        profile_id, created = self.state.upsert_profile(data["attributes"], data.get("id"))
        return _document(201 if created else 200, self._profile_resource(profile_id))

    def get_profiles(self, request: Request, match: re.Match[str]) -> Response:
        found = _FILTER.match(request.GET.get("filter", ""))
        if found is None:
            raise ApiError(400, "invalid", "Unsupported filter.", None)
        _, field, raw = found.groups()
        values = [value.strip().strip('"') for value in raw.strip("[]").split(",")]
        with self.state.lock:
            ids = [pid for pid, profile in self.state.profiles.items()
                   if (pid if field == "id" else profile.get(field)) in values]
            return _document(200, [self._profile_resource(pid) for pid in ids])

    def create_event(self, request: Request, match: re.Match[str]) -> Response:
        data = checks.resource(_body(request), "event")
        checks.event_attributes(data["attributes"], "/data/attributes", inline_profile=True)
        self.state.add_event(data["attributes"])
        return Response(status=202)

    def subscribe(self, request: Request, match: re.Match[str]) -> Response:
        data = checks.resource(_body(request), "profile-subscription-bulk-create-job")
        attributes = data["attributes"]
        checks.closed(attributes, frozenset({"profiles", "custom_source", "historical_import"}),
                      "/data/attributes")
        people = attributes.get("profiles", {}).get("data")
        if not isinstance(people, list) or not 1 <= len(people) <= 1000:
            raise ApiError(400, "invalid", "Between 1 and 1000 profiles are required.",
                           "/data/attributes/profiles/data")
        list_id = self._list_id(data.get("relationships", {}).get("list", {}).get("data"))
        valid = [checks.subscriber(item, f"/data/attributes/profiles/data/{index}")
                 for index, item in enumerate(people)]
        for person in valid:
            self.state.subscribe(list_id, person, attributes.get("custom_source"))
        return Response(status=202)

    def add_to_list(self, request: Request, match: re.Match[str]) -> Response:
        body = _body(request)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not 1 <= len(data) <= 1000:
            raise ApiError(400, "invalid", "Between 1 and 1000 profiles are required.", "/data")
        ids = []
        for index, item in enumerate(data):
            if not isinstance(item, dict) or item.get("type") != "profile" or \
                    item.get("id") not in self.state.profiles:
                raise ApiError(404, "not_found", "A profile in the request does not exist.",
                               f"/data/{index}/id")
            ids.append(item["id"])
        self._list_id({"type": "list", "id": match.group(1)})
        self.state.add_members(match.group(1), ids)
        return Response(status=204)

    def get_list(self, request: Request, match: re.Match[str]) -> Response:
        found = self.state.lists.get(match.group(1))
        if found is None:
            raise ApiError(404, "not_found", f"A list with id {match.group(1)} does not exist.")
        return _document(200, {"type": "list", "id": found.id, "attributes": {
            "name": found.name, "opt_in_process": found.opt_in_process}})

    def bulk_import(self, request: Request, match: re.Match[str]) -> Response:
        data = checks.resource(_body(request), "profile-bulk-import-job")
        profiles = data["attributes"].get("profiles", {}).get("data")
        if not isinstance(profiles, list) or not 1 <= len(profiles) <= 10_000:
            raise ApiError(400, "invalid", "Between 1 and 10,000 profiles are required.",
                           "/data/attributes/profiles/data")
        lists = [self._list_id(entry) for entry in
                 data.get("relationships", {}).get("lists", {}).get("data", [])]
        errors, accepted = [], []
        for index, item in enumerate(profiles):
            pointer = f"/data/attributes/profiles/data/{index}"
            attributes = item.get("attributes", {}) if isinstance(item, dict) else {}
            try:
                checks.profile_attributes(attributes, pointer)
            except ApiError as error:
                # Like Klaviyo: a bad profile fails alone, reported on the job.
                errors.append(import_error(error.code, error.detail, error.pointer or pointer,
                                           item if isinstance(item, dict) else {}))
                continue
            accepted.append({"index": index, "profile": item})
        job = self.state.add_job("profile-bulk-import-job", accepted, lists, errors,
                                 self.job_seconds)
        return _document(202, {"type": job["type"], "id": job["id"],
                               "attributes": job["attributes"]})

    def get_job(self, request: Request, match: re.Match[str]) -> Response:
        job = self._job(match.group(1))
        return _document(200, {"type": job["type"], "id": job["id"],
                               "attributes": job["attributes"]})

    def import_errors(self, request: Request, match: re.Match[str]) -> Response:
        """A finished job's refused profiles, a page at a time (``page[size]``,
        ``page[cursor]``: the offset), with a ``next`` link while more remain."""
        job = self._job(match.group(1))
        try:
            size = max(1, min(100, int(request.GET.get("page[size]", "20"))))
            start = max(0, int(request.GET.get("page[cursor]", "0")))
        except ValueError:
            raise ApiError(400, "invalid", "Invalid page parameters.") from None
        errors = job["errors"][start:start + size]
        base = f"{request.host_url}{request.path}"
        links = {"self": f"{base}?page[size]={size}&page[cursor]={start}"}
        if start + size < len(job["errors"]):
            links["next"] = f"{base}?page[size]={size}&page[cursor]={start + size}"
        return _document(200, errors, links)

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.state.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", "No such job.")
        return job

    def bulk_events(self, request: Request, match: re.Match[str]) -> Response:
        data = checks.resource(_body(request), "event-bulk-create-job")
        items = data["attributes"].get("events-bulk-create", {}).get("data")
        if not isinstance(items, list) or not 1 <= len(items) <= 1000:
            raise ApiError(400, "invalid", "Between 1 and 1000 events are required.",
                           "/data/attributes/events-bulk-create/data")
        for index, item in enumerate(items):
            pointer = f"/data/attributes/events-bulk-create/data/{index}/attributes"
            attributes = item.get("attributes", {}) if isinstance(item, dict) else {}
            profile = attributes.get("profile", {})
            checks.profile_attributes(profile.get("data", {}).get("attributes", {}),
                                      f"{pointer}/profile/data/attributes")
            for number, event in enumerate(attributes.get("events", {}).get("data", [])):
                checks.event_attributes(event.get("attributes", {}),
                                        f"{pointer}/events/data/{number}/attributes",
                                        inline_profile=False)
        for item in items:
            attributes = item["attributes"]
            for event in attributes["events"]["data"]:
                self.state.add_event({**event["attributes"], "profile": attributes["profile"]})
        return Response(status=202)

    # -- helpers ----------------------------------------------------------------

    def _list_id(self, reference: Any) -> str:
        if not isinstance(reference, dict) or reference.get("type") != "list" or \
                not isinstance(reference.get("id"), str):
            raise ApiError(400, "invalid", "A list relationship is required.",
                           "/data/relationships/list")
        if self.state.find_list(reference["id"]) is None:
            raise ApiError(404, "not_found", f"A list with id {reference['id']} does not exist.")
        return str(reference["id"])

    def _profile_resource(self, profile_id: str) -> dict[str, Any]:
        profile = dict(self.state.profiles[profile_id])
        meta = {key: profile.pop(key) for key in ("created", "updated") if key in profile}
        return {"type": "profile", "id": profile_id, "attributes": {**profile, **meta}}


def _body(request: Request) -> Any:
    try:
        return json.loads(request.body or b"null")
    except ValueError:
        raise ApiError(400, "invalid", "The request body is not valid JSON.") from None


def _document(status: int, data: Any, links: dict[str, str] | None = None) -> Response:
    for resource in data if isinstance(data, list) else [data]:
        if isinstance(resource, dict) and "type" in resource and resource.get("id"):
            # As Klaviyo answers (the official SDK reads it): the resource's
            # own address, e.g. https://a.klaviyo.com/api/profiles/01H…/.
            resource.setdefault("links", {
                "self": f"{_BASE.get()}/api/{resource['type']}s/{resource['id']}/"})
    document: dict[str, Any] = {"data": data}
    if links is not None:
        document["links"] = links
    response = Response(status=status, body=json.dumps(document).encode())
    response.content_type = _JSON_API
    return response


def _error(error: ApiError) -> Response:
    response = Response(status=error.status, body=json.dumps(error.body()).encode())
    response.content_type = _JSON_API
    response.headers.update(list(error.headers.items()))
    return response


_ROUTES: list[tuple[str, re.Pattern[str], str | None, Handler]] = [
    ("POST", re.compile(r"/api/profile-import"), "profile-import", FakeKlaviyo.profile_import),
    ("GET", re.compile(r"/api/profiles"), None, FakeKlaviyo.get_profiles),
    ("POST", re.compile(r"/api/events"), "events", FakeKlaviyo.create_event),
    ("POST", re.compile(r"/api/profile-subscription-bulk-create-jobs"), "subscribe",
     FakeKlaviyo.subscribe),
    ("POST", re.compile(r"/api/lists/([^/]+)/relationships/profiles"), "add-to-list",
     FakeKlaviyo.add_to_list),
    ("GET", re.compile(r"/api/lists/([^/]+)"), None, FakeKlaviyo.get_list),
    ("POST", re.compile(r"/api/profile-bulk-import-jobs"), "profile-bulk-import",
     FakeKlaviyo.bulk_import),
    ("GET", re.compile(r"/api/profile-bulk-import-jobs/([^/]+)"), "bulk-import-job",
     FakeKlaviyo.get_job),
    ("GET", re.compile(r"/api/profile-bulk-import-jobs/([^/]+)/import-errors"),
     "bulk-import-errors", FakeKlaviyo.import_errors),
    ("POST", re.compile(r"/api/event-bulk-create-jobs"), "event-bulk-create",
     FakeKlaviyo.bulk_events),
]
