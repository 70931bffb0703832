"""The shipped fake answers as Klaviyo does, for any client: every answer of
every operation it serves validates against Klaviyo's answer models (the
official SDK's, which reads ``data.links``, for one; and the OpenAPI spec's
response schemas too when ``$KLAVIYO_OPENAPI_SPEC`` names a copy)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from webtest import TestApp

from klaviyo_middleware.testing import FakeKlaviyo

from support import klaviyo_models, openapi_contract

KEY = "pk_fake_answers_000000000000000000"


def response_errors(method: str, path: str, status: int, body: Any) -> list[str]:
    errors = klaviyo_models.response_errors(method, path, status, body)
    if openapi_contract.spec_available():
        errors += openapi_contract.response_errors(method, path, status, body)
    return errors
HEADERS = {"Authorization": f"Klaviyo-API-Key {KEY}", "revision": "2026-07-15",
           "Content-Type": "application/vnd.api+json", "Accept": "application/vnd.api+json"}


@pytest.fixture
def klaviyo() -> TestApp:
    return TestApp(FakeKlaviyo(api_key=KEY, lists={"L1": "single_opt_in"}, job_seconds=0.01))


def call(app: TestApp, method: str, path: str, body: Any = None,
         expect: int | None = None) -> Any:
    answer = app.request(path, method=method, headers=HEADERS, expect_errors=True,
                         body=json.dumps(body).encode() if body is not None else b"")
    if expect is not None:
        assert answer.status_int == expect, answer.text
    parsed = json.loads(answer.body) if answer.body else None
    assert response_errors(method, path.split("?")[0], answer.status_int, parsed) == [], \
        (method, path, answer.status_int, parsed)
    return parsed


def profile(email: str) -> dict[str, Any]:
    return {"data": {"type": "profile", "attributes": {"email": email}}}


def test_every_answer_is_klaviyos(klaviyo):
    created = call(klaviyo, "POST", "/api/profile-import", profile("a@example.com"), 201)
    call(klaviyo, "POST", "/api/profile-import", profile("a@example.com"), 200)
    profile_id = created["data"]["id"]
    call(klaviyo, "GET", '/api/profiles?filter=equals(email,"a@example.com")', expect=200)
    call(klaviyo, "POST", "/api/events", {"data": {"type": "event", "attributes": {
        "properties": {}, "metric": {"data": {"type": "metric", "attributes": {"name": "X"}}},
        "profile": profile("a@example.com")}}}, 202)
    call(klaviyo, "POST", "/api/profile-subscription-bulk-create-jobs", {"data": {
        "type": "profile-subscription-bulk-create-job", "attributes": {"profiles": {"data": [
            {"type": "profile", "attributes": {"email": "a@example.com", "subscriptions": {
                "email": {"marketing": {"consent": "SUBSCRIBED"}}}}}]}},
        "relationships": {"list": {"data": {"type": "list", "id": "L1"}}}}}, 202)
    call(klaviyo, "POST", "/api/lists/L1/relationships/profiles",
         {"data": [{"type": "profile", "id": profile_id}]}, 204)
    call(klaviyo, "GET", "/api/lists/L1", expect=200)
    job = call(klaviyo, "POST", "/api/profile-bulk-import-jobs", {"data": {
        "type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
            {"type": "profile", "attributes": {"email": "b@example.com"}}]}}}}, 202)
    time.sleep(0.05)
    call(klaviyo, "GET", f"/api/profile-bulk-import-jobs/{job['data']['id']}", expect=200)
    call(klaviyo, "GET", f"/api/profile-bulk-import-jobs/{job['data']['id']}/import-errors",
         expect=200)
    call(klaviyo, "POST", "/api/event-bulk-create-jobs", {"data": {
        "type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": [{
            "type": "event-bulk-create", "attributes": {
                "profile": profile("a@example.com"),
                "events": {"data": [{"type": "event", "attributes": {
                    "properties": {}, "metric": {"data": {"type": "metric",
                                                          "attributes": {"name": "X"}}}}}]}}}]}}}},
         202)


def test_every_refusal_is_klaviyos(klaviyo):
    call(klaviyo, "GET", "/api/lists/NOPE", expect=404)
    call(klaviyo, "POST", "/api/profile-import", {"data": {}}, 400)
    wrong = TestApp(klaviyo.app)
    answer = wrong.post("/api/events", b"{}", headers={**HEADERS, "Authorization": "x"},
                        expect_errors=True)
    assert answer.status_int == 401
    assert response_errors("POST", "/api/events", 401, json.loads(answer.body)) == []
