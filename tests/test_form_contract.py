"""docs/forms.md: every form field, and exactly what Klaviyo receives.

The ``klaviyo`` fixture validates each body against Klaviyo's OpenAPI
request schema (unknown attributes rejected) and fails the test otherwise.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from klaviyo_middleware import notices

UPDATE = "/klaviyoConnect/api/updateProfile"
IDENTIFY = "/klaviyoConnect/api/identify"
JSON = {"Accept": "application/json"}


def post(app, form, path=UPDATE, status=200):
    return app.post(path, form, headers=JSON, status=status)


def profile_sent(klaviyo):
    return klaviyo.bodies("/api/profile-import")[0]["data"]["attributes"]


class TestEmail:
    def test_required(self, app, klaviyo):
        response = post(app, {"first_name": "Sarah"}, status=400)
        assert response.json == {"success": False,
                                 "errors": {"email": ["Enter your email address."]}}
        assert klaviyo.calls == []

    @pytest.mark.parametrize("value", ["not-an-email", "a@", "@b.com", "a b@c.com", "a@b"])
    def test_invalid(self, app, klaviyo, value):
        response = post(app, {"email": value}, status=400)
        assert response.json["errors"] == {"email": ["Enter a valid email address."]}
        assert klaviyo.calls == []

    def test_sent_normalised(self, app, klaviyo):
        post(app, {"email": "  Sarah@Example.COM "})
        assert profile_sent(klaviyo) == {"email": "Sarah@example.com"}

    def test_profile_bracket_form(self, app, klaviyo):
        post(app, {"profile[email]": "sarah@example.com", "profile[first_name]": "Sarah",
                   "profile[extra][topic]": "shoes", "profile[city]": "Leeds"})
        assert profile_sent(klaviyo) == {
            "email": "sarah@example.com", "first_name": "Sarah",
            "location": {"city": "Leeds"}, "properties": {"topic": "shoes"},
        }

    def test_no_dns_lookup(self, app, klaviyo):
        # A domain that cannot exist: syntax checks only, the visitor never waits on DNS.
        post(app, {"email": "someone@no-such-domain.invalid-tld-xyz"})
        assert profile_sent(klaviyo)["email"] == "someone@no-such-domain.invalid-tld-xyz"


def test_special_properties(app, klaviyo):
    post(app, {
        "email": "sarah@example.com", "id": "user-123", "first_name": "Sarah",
        "last_name": "Mason", "title": "Regional Manager", "organization": "Example Corp",
        "image": "https://example.com/a.jpg",
    })
    assert profile_sent(klaviyo) == {
        "email": "sarah@example.com", "external_id": "user-123", "first_name": "Sarah",
        "last_name": "Mason", "title": "Regional Manager", "organization": "Example Corp",
        "image": "https://example.com/a.jpg",
    }


def test_image_must_be_a_web_address(app, klaviyo):
    response = post(app, {"email": "a@example.com", "image": "javascript:alert(1)"},
                    status=400)
    assert list(response.json["errors"]) == ["image"]


def test_empty_optional_fields_are_not_sent(app, klaviyo):
    post(app, {"email": "a@example.com", "first_name": "", "city": "  ", "id": ""})
    assert profile_sent(klaviyo) == {"email": "a@example.com"}


class TestPhone:
    def test_international_number_to_e164(self, app, klaviyo):
        post(app, {"email": "a@example.com", "phone_number": "+44 20 7946 0958"})
        assert profile_sent(klaviyo)["phone_number"] == "+442079460958"

    def test_national_number_with_default_region(self, make_app, klaviyo):
        app = make_app(phone_region="US")
        post(app, {"email": "a@example.com", "phone_number": "(201) 555-0123"})
        assert profile_sent(klaviyo)["phone_number"] == "+12015550123"

    def test_national_number_without_region_is_an_error(self, app, klaviyo):
        response = post(app, {"email": "a@example.com", "phone_number": "(201) 555-0123"},
                        status=400)
        assert "international format" in response.json["errors"]["phone_number"][0]

    @pytest.mark.parametrize("value", ["12", "+999 123", "call me", "+1 555"])
    def test_invalid(self, app, klaviyo, value):
        response = post(app, {"email": "a@example.com", "phone_number": value}, status=400)
        assert list(response.json["errors"]) == ["phone_number"]
        assert klaviyo.calls == []


def test_location_fields(app, klaviyo):
    post(app, {"email": "a@example.com", "city": "New York", "region": "NY",
               "country": "United States", "zip": "10017", "address1": "89 E 42nd St",
               "address2": "1st floor", "timezone": "America/New_York"})
    assert profile_sent(klaviyo)["location"] == {
        "city": "New York", "region": "NY", "country": "United States", "zip": "10017",
        "address1": "89 E 42nd St", "address2": "1st floor", "timezone": "America/New_York",
    }


def test_extra_becomes_custom_properties(app, klaviyo):
    post(app, {"email": "a@example.com", "extra[color]": "red", "extra[sizes][]": ["S", "M"]})
    assert profile_sent(klaviyo)["properties"] == {"color": "red", "sizes": ["S", "M"]}


def test_extra_must_be_a_group(app, klaviyo):
    response = post(app, {"email": "a@example.com", "extra": "flat"}, status=400)
    assert list(response.json["errors"]) == ["extra"]


class TestLists:
    def test_list_and_lists_union_without_empties_or_repeats(self, app, klaviyo):
        post(app, {"email": "a@example.com", "list": "AAA111",
                   "lists[]": ["BBB222", "", "AAA111", "CCC333"]})
        subscribed = [body["data"]["relationships"]["list"]["data"]["id"]
                      for body in klaviyo.bodies("/api/profile-subscription-bulk-create-jobs")]
        assert subscribed == ["AAA111", "BBB222", "CCC333"]

    def test_subscribe_body(self, make_app, klaviyo):
        app = make_app(custom_source="Footer form")
        post(app, {"email": "a@example.com", "first_name": "A", "list": "Y6nRLr"})
        assert klaviyo.bodies("/api/profile-subscription-bulk-create-jobs") == [{
            "data": {
                "type": "profile-subscription-bulk-create-job",
                "attributes": {
                    "custom_source": "Footer form",
                    "profiles": {"data": [{"type": "profile", "attributes": {
                        "email": "a@example.com",
                        "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}},
                    }}]},
                },
                "relationships": {"list": {"data": {"type": "list", "id": "Y6nRLr"}}},
            }
        }]

    @pytest.mark.parametrize("value", ["../profiles", "a b", "x" * 65, "list/1"])
    def test_invalid_list_id(self, app, klaviyo, value):
        response = post(app, {"email": "a@example.com", "list": value}, status=400)
        assert response.json["errors"] == {"lists": ["Unknown list."]}
        assert klaviyo.calls == []


class TestSubscribing:
    # The first era's confirmOptIn subscribed either way (0 only skipped the
    # confirmation email); plugin 4.x's useSubscribeEndpoint=1 subscribed.
    @pytest.mark.parametrize("form", [
        {}, {"confirmOptIn": "1"}, {"confirmOptIn": "0"}, {"confirmOptIn": ""},
        {"subscribe": "true"}, {"useSubscribeEndpoint": "1"},
        {"subscribe": "1", "confirmOptIn": "0"}])
    def test_subscribes_with_consent(self, app, klaviyo, form):
        post(app, {"email": "a@example.com", "list": "L1", **form})
        assert klaviyo.paths() == ["/api/profile-import",
                                   "/api/profile-subscription-bulk-create-jobs"]

    @pytest.mark.parametrize("form", [
        {"subscribe": "false"}, {"subscribe": "0", "confirmOptIn": "1"},
        {"useSubscribeEndpoint": "0"}])
    def test_false_adds_to_list_by_profile_id(self, app, klaviyo, form):
        post(app, {"email": "a@example.com", "lists[]": ["L1", "L2"], **form})
        assert klaviyo.paths() == ["/api/profile-import",
                                   "/api/lists/L1/relationships/profiles",
                                   "/api/lists/L2/relationships/profiles"]
        profile_id = klaviyo.paths and klaviyo.bodies("/api/lists/L1/relationships/profiles")
        assert profile_id == [{"data": [{"type": "profile", "id": profile_id[0]["data"][0]["id"]}]}]
        assert profile_id[0]["data"][0]["id"].startswith("01")

    def test_confirm_opt_in_0_is_explained_once_in_the_log(self, app, klaviyo, caplog):
        notices.forget_all()
        for address in ("a@example.com", "b@example.com"):
            post(app, {"email": address, "list": "L1", "confirmOptIn": "0"})
        explained = [record.getMessage() for record in caplog.records
                     if "confirmOptIn=0" in record.getMessage()]
        assert len(explained) == 1
        assert "list's own opt-in setting decides" in explained[0]

    def test_invalid_value(self, app, klaviyo):
        response = post(app, {"email": "a@example.com", "subscribe": "maybe"}, status=400)
        assert response.json["errors"] == {"subscribe": ["Choose yes or no."]}


class TestEvent:
    def test_full_event(self, app, klaviyo):
        before = datetime.now(timezone.utc).replace(microsecond=0)
        post(app, {"email": "a@example.com", "first_name": "A", "event[name]": "Ordered",
                   "event[event_id]": "order-42", "event[value]": "9.99",
                   "event[value_currency]": "usd", "event[extra][items][0][sku]": "X"})
        after = datetime.now(timezone.utc)
        attributes = klaviyo.bodies("/api/events")[0]["data"]["attributes"]
        sent_time = datetime.fromisoformat(attributes.pop("time"))
        assert before <= sent_time <= after + timedelta(seconds=1)
        assert attributes == {
            "properties": {"items": [{"sku": "X"}]},
            "metric": {"data": {"type": "metric", "attributes": {"name": "Ordered"}}},
            # The profile step wrote first_name; the event only names the
            # person, so a late event cannot write back an older name.
            "profile": {"data": {"type": "profile", "attributes": {"email": "a@example.com"}}},
            "unique_id": "order-42",
            "value": 9.99,
            "value_currency": "USD",
        }

    def test_unique_id_defaults_to_the_submission_id(self, app, klaviyo):
        first = post(app, {"email": "a@example.com", "event[name]": "Signed up"})
        second = post(app, {"email": "a@example.com", "event[name]": "Signed up"})
        ids = [body["data"]["attributes"]["unique_id"]
               for body in klaviyo.bodies("/api/events")]
        assert ids == [first.json["submission_id"], second.json["submission_id"]]
        assert ids[0] != ids[1]

    def test_integer_value_stays_integer(self, app, klaviyo):
        post(app, {"email": "a@example.com", "event[name]": "X", "event[value]": "10"})
        assert klaviyo.bodies("/api/events")[0]["data"]["attributes"]["value"] == 10

    def test_name_required_with_other_event_fields(self, app, klaviyo):
        response = post(app, {"email": "a@example.com", "event[value]": "5"}, status=400)
        assert response.json["errors"] == {"event[name]": ["Name the event."]}
        assert klaviyo.calls == []

    def test_a_name_too_long_is_refused(self, app, klaviyo):
        form = {"email": "a@example.com", "event[name]": "x" * 200}
        response = post(app, form, status=400)
        assert response.json["errors"] == {"event[name]": ["Use at most 127 characters."]}

    @pytest.mark.parametrize(("field", "value"), [
        ("event[value]", "ten"), ("event[value]", "Foobar"), ("event[value]", "NaN"),
        ("event[value]", "Infinity"), ("event[value_currency]", "dollars")])
    def test_unusable_value_or_currency_is_left_out_with_a_warning(
            self, app, klaviyo, caplog, field, value):
        # Hidden fields the visitor cannot correct (the first era's own
        # example posts event[value]=Foobar): the event goes without them.
        post(app, {"email": "a@example.com", "event[name]": "X", "event[value]": "5",
                   "event[value_currency]": "EUR", field: value})
        (body,) = klaviyo.bodies("/api/events")
        attributes = body["data"]["attributes"]
        kept = {"value": 5, "value_currency": "EUR"}
        kept.pop(field[len("event["):-1])
        assert {key: attributes[key] for key in ("value", "value_currency")
                if key in attributes} == kept
        assert any(f"{field} is not usable" in record.getMessage() for record in caplog.records)

    def test_event_comes_after_lists(self, app, klaviyo):
        post(app, {"email": "a@example.com", "list": "L1", "subscribe": "0",
                   "event[name]": "Joined"})
        assert klaviyo.paths() == ["/api/profile-import",
                                   "/api/lists/L1/relationships/profiles", "/api/events"]

    def test_identify_sends_no_event(self, app, klaviyo):
        post(app, {"email": "a@example.com", "event[name]": "X"}, path=IDENTIFY)
        assert klaviyo.paths() == ["/api/profile-import"]


def test_all_errors_reported_at_once(app, klaviyo):
    response = post(app, {"email": "nope", "phone_number": "12", "list": "bad list",
                          "event[value]": "5"}, status=400)
    assert set(response.json["errors"]) == {"email", "phone_number", "lists",
                                            "event[name]"}
    assert klaviyo.calls == []


def test_json_body_with_non_text_values(app, klaviyo):
    response = app.post_json(UPDATE, {"email": ["a@example.com"], "first_name": {"x": 1}},
                             status=400)
    assert set(response.json["errors"]) == {"email", "first_name"}


def test_a_misspelt_field_is_named_once_per_form(app, klaviyo, caplog):
    notices.forget_all()
    for _ in range(3):
        post(app, {"email": "a@example.com", "frist_name": "Ada", "lsit": "L1",
                   "consent": "on", "csrf_token": "t", "CRAFT_CSRF_TOKEN": "t"})
    warnings = [record.getMessage() for record in caplog.records
                if "is not read; did you mean" in record.getMessage()]
    assert len(warnings) == 2
    assert "'frist_name', which is not read; did you mean 'first_name'?" in warnings[0]
    assert "did you mean 'list'?" in warnings[1]
    # The rest of the form still goes.
    assert profile_sent(klaviyo) == {"email": "a@example.com"}


def test_a_phone_only_form_is_told_only_about_its_phone_number(app, klaviyo):
    """The SMS form has no email field: "Enter your email address" would
    name a field the visitor cannot see."""
    response = post(app, {"profile[phone_number]": "12", "list": "L1", "subscribe": "1"},
                    status=400)
    assert list(response.json["errors"]) == ["phone_number"]
