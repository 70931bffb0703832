"""The contract the suite holds every call to (the official SDK's models)
refuses what Klaviyo refuses: were it lenient, every test that asserts "no
violations" would pass for nothing."""

from __future__ import annotations

import pytest

from klaviyo_middleware.klaviyo import payloads
from klaviyo_middleware.klaviyo.client import DEFAULT_REVISION

from support import klaviyo_models
from support.factories import submission
from support.klaviyo_fake import MockedKlaviyo


def profile_body(**attributes: object) -> dict[str, object]:
    return {"data": {"type": "profile", "attributes": {"email": "a@example.com", **attributes}}}


def test_what_we_send_is_a_request_klaviyo_takes():
    sent = payloads.profile_import(submission(1))
    assert klaviyo_models.request_errors("POST", "/api/profile-import", sent) == []


@pytest.mark.parametrize("attributes, where", [
    ({"favourite_colour": "red"}, "/data/attributes/favourite_colour"),
    ({"location": {"city": "Leeds", "postcode": "LS1"}}, "/data/attributes/location/postcode"),
])
def test_an_attribute_klaviyo_does_not_know_is_named(attributes, where):
    errors = klaviyo_models.request_errors("POST", "/api/profile-import",
                                           profile_body(**attributes))
    assert [error.split(":")[0] for error in errors] == [where]


def test_custom_properties_stay_free_form():
    body = profile_body(properties={"anything": {"nested": [1, "two"]}})
    assert klaviyo_models.request_errors("POST", "/api/profile-import", body) == []


@pytest.mark.parametrize("body", [
    {"data": {"type": "profiles", "attributes": {"email": "a@example.com"}}},  # wrong type
    {"data": {"type": "profile", "attributes": {"email": 7}}},  # not a string
    {"data": {"attributes": {"email": "a@example.com"}}},  # type is required
])
def test_a_malformed_body_is_refused(body):
    assert klaviyo_models.request_errors("POST", "/api/profile-import", body) != []


def test_an_unknown_operation_is_a_violation():
    fake = MockedKlaviyo()
    fake.handle("POST", "/api/profile-imports", {}, {"data": {}})
    assert any("not an operation" in violation for violation in fake.violations)


def test_answers_are_held_to_the_answer_models():
    refusal = {"errors": [{"id": "x", "status": 400, "code": "invalid", "title": "Invalid",
                           "detail": "no", "source": {"pointer": "/data"}}]}
    assert klaviyo_models.response_errors("POST", "/api/events", 400, refusal) == []
    assert klaviyo_models.response_errors("POST", "/api/events", 400, {"error": "no"}) != []
    assert klaviyo_models.response_errors("POST", "/api/events", 202, None) == []
    assert klaviyo_models.response_errors("POST", "/api/events", 302, None) != []


def test_rate_limits_are_read_from_the_sdk():
    assert klaviyo_models.rate_limit("POST", "/api/profile-bulk-import-jobs") == (10, 150)


def test_the_sdk_knows_the_revision_we_send():
    # The SDK is generated for one revision; ours may be older but never newer
    # than the models we are held to.
    assert DEFAULT_REVISION <= klaviyo_models.SDK_REVISION
