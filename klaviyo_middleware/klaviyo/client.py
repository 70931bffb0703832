"""A small client for the few Klaviyo server-side endpoints we call (design.md §2).

Plain ``requests`` rather than Klaviyo's 14 MB SDK: we need five endpoints,
exact control over retries and timeouts, and a pinned revision as a setting.
Sessions are per thread because ``requests.Session`` is not thread-safe.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from klaviyo_middleware import metrics
from klaviyo_middleware.errors import DeliveryError
from klaviyo_middleware.klaviyo import transport
from klaviyo_middleware.redact import redact

# Where every process (web node, spool thread, Celery worker) finds the account.
ENV_API_KEY = "KLAVIYO_PRIVATE_API_KEY"
ENV_API_URL = "KLAVIYO_API_URL"
ENV_REVISION = "KLAVIYO_REVISION"

DEFAULT_API_URL = "https://a.klaviyo.com"
DEFAULT_REVISION = "2026-07-15"
# (connect, read) seconds: Klaviyo answers in well under a second normally;
# anything slower is better retried than waited on.
DEFAULT_TIMEOUT = (5.0, 15.0)

# The longest pause a 429 may impose. Klaviyo's windows are a second and a
# minute, so its Retry-After is seconds to a minute; a larger value is a
# proxy's or a mistake, and one "Retry-After: 1e12" must not stop every
# process on the spool for good (``klaviyo-middleware spool resume`` lifts a
# pause by hand).
MAX_RETRY_AFTER = 600.0

# Pages of a job's import errors read at most: a job holds 10,000 profiles
# at most, 100 to a page.
MAX_ERROR_PAGES = 101
_PORTS = {"http": 80, "https": 443}

_JSON_API = "application/vnd.api+json"
_EXPECTED_IN = re.compile(r"available in (\d+(?:\.\d+)?) second", re.IGNORECASE)


class KlaviyoError(DeliveryError):
    """Klaviyo did not do what was asked: it refused (4xx), failed (5xx), did
    not answer in time or could not be reached.

    ``transient`` says whether asking again later may work (429, 5xx other
    than 501, timeouts, connection errors); ``detail`` is Klaviyo's own
    explanation (see :class:`~klaviyo_middleware.errors.DeliveryError`).
    """


class KlaviyoClient:
    """Calls Klaviyo's REST API with the headers of design.md §2."""

    def __init__(
        self,
        api_key: str,
        *,
        api_url: str = DEFAULT_API_URL,
        revision: str = DEFAULT_REVISION,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self._api_key = api_key
        self.api_url = api_url.rstrip("/")
        self.revision = revision
        self.timeout = timeout
        self._local = threading.local()
        self._deadlines = threading.local()

    def __repr__(self) -> str:
        # Never the key: reprs end up in logs and error pages.
        return f"<KlaviyoClient {self.api_url} revision={self.revision}>"

    @property
    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = transport.bounded_session()
            session.headers.update(
                {
                    "Authorization": f"Klaviyo-API-Key {self._api_key}",
                    "revision": self.revision,
                    "Content-Type": _JSON_API,
                    "Accept": _JSON_API,
                    "User-Agent": "klaviyo_middleware",
                }
            )
            self._local.session = session
        return session

    def reset(self) -> None:
        """Drop every thread's session without closing it (after a fork,
        they hold the parent's sockets)."""
        self._local = threading.local()

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Within the block, this thread's calls end ``seconds`` from now at
        the latest: timeouts shrink to the time left, and a call with none
        left fails at once (transiently). For answers a visitor waits on."""
        previous = getattr(self._deadlines, "at", None)
        self._deadlines.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadlines.at = previous

    def _timeouts(self, path: str) -> tuple[tuple[float, float], float]:
        """The (connect, read) timeouts and the deadline of one call: the
        whole call, answer included, within connect + read seconds, or
        within what a visitor's deadline leaves."""
        connect, read = self.timeout
        at: float | None = getattr(self._deadlines, "at", None)
        if at is None:
            return self.timeout, connect + read
        left = at - time.monotonic()
        if left <= 0:
            raise KlaviyoError(f"no time left to call POST {path}", transient=True)
        return (min(connect, left), min(read, left)), min(connect + read, left)

    def import_profile(self, body: dict[str, Any]) -> str:
        """Create or update a profile; returns its Klaviyo id."""
        return _new_id(self._post("/api/profile-import", body, (200, 201)), "the profile")

    def subscribe(self, body: dict[str, Any]) -> None:
        self._post("/api/profile-subscription-bulk-create-jobs", body, (202,))

    def add_to_list(self, list_id: str, body: dict[str, Any]) -> None:
        self._post(f"/api/lists/{quote(list_id, safe='')}/relationships/profiles", body, (204,))

    def create_event(self, body: dict[str, Any]) -> None:
        self._post("/api/events", body, (202,))

    def bulk_import_profiles(self, body: dict[str, Any]) -> str:
        """Start a profile import job; returns the job's id, to follow it with
        :meth:`import_job` until Klaviyo has processed it."""
        return _new_id(self._post("/api/profile-bulk-import-jobs", body, (202,)),
                       "the import job")

    def import_job(self, job_id: str) -> dict[str, Any]:
        """The attributes of a profile import job (``status``, counts)."""
        answer = self._get(f"/api/profile-bulk-import-jobs/{quote(job_id, safe='')}")
        try:
            attributes = answer["data"]["attributes"]
        except (KeyError, TypeError):
            attributes = None
        if not isinstance(attributes, dict) or not isinstance(attributes.get("status"), str):
            raise KlaviyoError("Klaviyo's answer about an import job had no status",
                               transient=True)
        failed = attributes.get("failed_count", 0)
        if failed is None:
            failed = 0
        if isinstance(failed, bool) or not isinstance(failed, int) or failed < 0:
            raise KlaviyoError("Klaviyo's answer about an import job had an unreadable "
                               "failed_count", transient=True)
        return {**attributes, "failed_count": failed}

    def import_errors(self, job_id: str) -> list[dict[str, Any]]:
        """Every profile a finished import job refused: Klaviyo's
        ``import-error`` attributes (``code``, ``detail``, ``source``,
        ``original_payload``), all pages."""
        path: str | None = f"/api/profile-bulk-import-jobs/{quote(job_id, safe='')}/import-errors"
        params: dict[str, str] | None = {"page[size]": "100"}
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        while path is not None:
            if len(seen) >= MAX_ERROR_PAGES or path in seen:
                # A job holds at most 10,000 profiles: 100 pages of 100. More,
                # or a page naming itself again, is a loop, not a report.
                raise KlaviyoError("Klaviyo's list of import errors did not end",
                                   transient=True)
            seen.add(path)
            answer = self._get(path, params)
            data = answer.get("data") if isinstance(answer, dict) else None
            if not isinstance(data, list):
                raise KlaviyoError("Klaviyo's list of import errors was unreadable",
                                   transient=True)
            found.extend(item["attributes"] for item in data
                         if isinstance(item, dict) and isinstance(item.get("attributes"), dict))
            links = answer.get("links")
            following = links.get("next") if isinstance(links, dict) else None
            path, params = None, None
            if isinstance(following, str):
                path = self._own_path(following)
        return found

    def _own_path(self, url: str) -> str | None:
        """The path and query of ``url`` if it is on Klaviyo's own origin
        (scheme, host and port exactly: the key goes nowhere else), else None."""
        ours, theirs = urlsplit(self.api_url), urlsplit(url)
        try:
            same = (theirs.scheme, theirs.hostname, theirs.port or _PORTS.get(theirs.scheme)) == (
                ours.scheme, ours.hostname, ours.port or _PORTS.get(ours.scheme))
        except ValueError:  # a port that is not a number
            return None
        if not same or theirs.username is not None or theirs.password is not None:
            return None
        base = ours.path.rstrip("/")
        if not theirs.path.startswith(base + "/"):
            return None
        return theirs.path[len(base):] + (f"?{theirs.query}" if theirs.query else "")

    def bulk_create_events(self, body: dict[str, Any]) -> None:
        self._post("/api/event-bulk-create-jobs", body, (202,))

    def probe(self, method: str, path: str,
              body: dict[str, Any] | None = None) -> tuple[int | None, Any]:
        """One call whose answer is looked at, not judged (``klaviyo-middleware
        check``): the status and the JSON body, ``(None, None)`` when Klaviyo
        could not be reached."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        try:
            response = transport.call(self.session, method, self.api_url + path, data=data,
                                      timeout=self.timeout, deadline=sum(self.timeout))
        except (requests.RequestException, transport.DeadlinePassed, transport.AnswerTooLarge):
            return None, None
        try:
            return response.status_code, response.json() if response.content else None
        except ValueError:
            return response.status_code, None

    def _post(self, path: str, body: dict[str, Any], expect: tuple[int, ...]) -> Any:
        try:
            # Serialised here, strictly, rather than by requests: a value
            # JSON cannot hold is the submission's fault, and must not pass
            # for "Klaviyo unreachable" and be retried forever.
            data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise unserialisable(exc) from None
        return self._send("POST", path, expect, data=data)

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._send("GET", path, (200,), params=params)

    def _send(self, method: str, path: str, expect: tuple[int, ...], **arguments: Any) -> Any:
        """The call, and its answer's JSON (``None`` without one). Only the
        statuses Klaviyo documents for the call (``expect``) are success."""
        timeout, deadline = self._timeouts(path)
        endpoint = endpoint_template(path)
        try:
            response = transport.call(self.session, method, self.api_url + path,
                                      timeout=timeout, deadline=deadline, **arguments)
        except (requests.Timeout, transport.DeadlinePassed):
            metrics.klaviyo_call(method, endpoint, "timeout")
            raise KlaviyoError(
                f"Klaviyo did not answer {method} {path} in time ({deadline:g} s at most)",
                transient=True,
            ) from None
        except transport.AnswerTooLarge:
            metrics.klaviyo_call(method, endpoint, "too_large")
            raise KlaviyoError(
                f"Klaviyo's answer to {method} {path} was longer than "
                f"{transport.MAX_ANSWER_BYTES // 1024} KiB, more than it ever sends",
                transient=True,
            ) from None
        except requests.RequestException as exc:
            metrics.klaviyo_call(method, endpoint, "unreachable")
            # The exception text can hold the URL but never the key (it is a
            # header); keep only its class name to be safe.
            raise KlaviyoError(
                f"Could not reach Klaviyo for {method} {path} ({type(exc).__name__})",
                transient=True,
            ) from None
        metrics.klaviyo_call(method, endpoint, str(response.status_code))
        if not 200 <= response.status_code < 300:
            # Only a 2xx is Klaviyo taking the call: a redirect is not
            # followed, and a page it leads to proves nothing.
            raise error_from_response(path, response, method)
        if response.status_code not in expect:
            # Another 2xx than Klaviyo answers this call with is not Klaviyo
            # (a proxy's page, a captive portal): asking again may work.
            raise KlaviyoError(
                f"Klaviyo answered {response.status_code} to {method} {path}, where it "
                f"answers {' or '.join(map(str, expect))}", status=response.status_code,
                transient=True)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None


# An id in a path (a list, a job) becomes {id}: metric labels stay few.
_PATH_ID = re.compile(r"^(/api/[a-z-]+/)[^/?]+")


def endpoint_template(path: str) -> str:
    """``/api/lists/Y6nRLr/relationships/profiles`` → ``/api/lists/{id}/relationships/profiles``."""
    path = path.split("?", 1)[0]
    return _PATH_ID.sub(r"\1{id}", path) if path.count("/") > 2 else path


def _new_id(answer: Any, what: str) -> str:
    """``data.id`` of Klaviyo's answer. Without it nobody can tell what became
    of the call (which profile, which job), so it is a transient failure:
    the call is made again, which an upsert or an import job allows."""
    try:
        found = answer["data"]["id"]
    except (KeyError, TypeError):
        found = None
    if not isinstance(found, str) or not found:
        raise KlaviyoError(f"Klaviyo accepted {what} but did not return its id",
                           transient=True)
    return found


def unserialisable(exc: Exception) -> DeliveryError:
    """The permanent error of a submission holding a value JSON cannot carry
    (ours: Klaviyo never saw it)."""
    return DeliveryError(
        f"the submission holds a value that cannot be sent as JSON ({type(exc).__name__})",
        code="unserialisable",
        transient=False,
    )


def error_from_response(path: str, response: requests.Response | transport.Answer,
                        method: str = "POST") -> KlaviyoError:
    """A :class:`KlaviyoError` from any failed answer, JSON:API or not.

    Klaviyo's errors are ``{"errors": [{code, title, detail, source}]}``, but a
    CDN in front of it may answer with an HTML page (e.g. a 403 bot
    challenge), so nothing about the body is assumed.
    """
    status = response.status_code
    first: dict[str, Any] = {}
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        errors = payload.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
    code = _string(first.get("code"))
    # The title goes into log lines; Klaviyo's titles are generic, but a
    # proxy's need not be.
    title = _string(first.get("title"))
    title = redact(title) if title else None
    detail = _string(first.get("detail"))
    source = first.get("source")
    pointer = _string(source.get("pointer")) if isinstance(source, dict) else None
    if 300 <= status < 400:
        title = "a redirect, not followed"
    elif not first and "html" in response.headers.get("Content-Type", ""):
        title = "an HTML page instead of an API answer"
        if response.headers.get("cf-mitigated"):
            title += " (a bot challenge)"
    retry_after = None
    if status == 429:
        retry_after = _retry_after(response.headers.get("Retry-After"), detail)
    # A redirect is a proxy's, or a misconfigured api_url: not Klaviyo's
    # answer, so asking again later may work (and it is never followed).
    transient = status == 429 or (status >= 500 and status != 501) or 300 <= status < 400
    summary = f"Klaviyo answered {status}"
    if code:
        summary += f" {code}"
    if title:
        summary += f": {title}"
    return KlaviyoError(
        f"{summary} ({method} {path})",
        status=status,
        code=code,
        detail=detail,
        pointer=pointer,
        retry_after=retry_after,
        transient=transient,
    )


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _retry_after(header: str | None, detail: str | None) -> float | None:
    """Seconds from ``Retry-After`` (or Klaviyo's detail text), at most
    :data:`MAX_RETRY_AFTER`; ``None`` when neither says."""
    seconds = _retry_after_header(header) if header else None
    if seconds is None and detail:
        match = _EXPECTED_IN.search(detail)
        if match:
            seconds = float(match.group(1))
    if seconds is None or math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _retry_after_header(header: str) -> float | None:
    try:
        return float(header)
    except ValueError:
        pass
    try:
        # HTTP also allows a date; Klaviyo sends seconds, proxies may not.
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return (when - datetime.now(timezone.utc)).total_seconds()
