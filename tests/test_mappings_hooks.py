"""docs/forms.md, "Mappings and hooks": profile mappings and hooks."""

from __future__ import annotations

import sys
import textwrap
from importlib import metadata
from types import SimpleNamespace

import pytest

from klaviyo_middleware import CancelSubmission, register_mapping
from klaviyo_middleware.web.mappings import _registered

UPDATE = "/klaviyoConnect/api/updateProfile"
JSON = {"Accept": "application/json"}


def profile_sent(klaviyo):
    return klaviyo.bodies("/api/profile-import")[0]["data"]["attributes"]


class TestBuiltins:
    @pytest.mark.parametrize("name", [None, "formdata", "formdata_mapping"])
    def test_formdata(self, app, klaviyo, name):
        form = {"email": "a@example.com", "first_name": "A"}
        if name:
            form["klaviyoProfileMapping"] = name
        app.post(UPDATE, form, headers=JSON)
        assert profile_sent(klaviyo) == {"email": "a@example.com", "first_name": "A"}

    @pytest.mark.parametrize("name", ["user", "usermodel_mapping"])
    def test_user_from_loader_wins_over_the_form(self, make_app, klaviyo, name):
        user = SimpleNamespace(email="member@example.com", first_name="Mia", last_name="Lee",
                               id=42)
        app = make_app(user_loader=lambda environ: user)
        app.post(UPDATE, {"klaviyoProfileMapping": name, "email": "victim@example.com",
                          "city": "Leeds"}, headers=JSON)
        assert profile_sent(klaviyo) == {
            "email": "member@example.com", "external_id": "42", "first_name": "Mia",
            "last_name": "Lee", "location": {"city": "Leeds"},
        }

    def test_user_loader_may_return_a_mapping(self, make_app, klaviyo):
        app = make_app(user_loader=lambda environ: {"email": "m@example.com",
                                                    "firstName": "Mo"})
        app.post(UPDATE, {"klaviyoProfileMapping": "user"}, headers=JSON)
        assert profile_sent(klaviyo) == {"email": "m@example.com", "first_name": "Mo"}

    def test_user_falls_back_to_remote_user(self, app, klaviyo):
        app.post(UPDATE, {"klaviyoProfileMapping": "user"}, headers=JSON,
                 extra_environ={"REMOTE_USER": "remote@example.com"})
        assert profile_sent(klaviyo) == {"email": "remote@example.com",
                                         "external_id": "remote@example.com"}

    def test_user_without_anyone_signed_in(self, make_app, klaviyo):
        app = make_app(user_loader=lambda environ: None)
        response = app.post(UPDATE, {"klaviyoProfileMapping": "user", "email": "x@example.com"},
                            headers=JSON, status=400)
        assert response.json["errors"] == {"email": ["Sign in to continue."]}
        assert klaviyo.calls == []

    def test_unknown_mapping_is_a_field_error(self, app, klaviyo):
        response = app.post(UPDATE, {"klaviyoProfileMapping": "nope", "email": "a@example.com"},
                            headers=JSON, status=400)
        assert response.json["errors"] == {"klaviyoProfileMapping": ["Unknown profile mapping."]}
        assert klaviyo.calls == []


class TestRegistration:
    def test_keyword_argument(self, make_app, klaviyo):
        def vip(request):
            return {"email": request.POST["email"], "extra": {"vip": True}}

        app = make_app(mappings={"vip": vip})
        app.post(UPDATE, {"klaviyoProfileMapping": "vip", "email": "a@example.com"},
                 headers=JSON)
        assert profile_sent(klaviyo)["properties"] == {"vip": True}

    def test_instance_decorator(self, make_app, klaviyo):
        app = make_app()

        @make_app.middleware.mapping("staff")
        def staff(request):
            return {"email": "staff@example.com"}

        app.post(UPDATE, {"klaviyoProfileMapping": "staff"}, headers=JSON)
        assert profile_sent(klaviyo) == {"email": "staff@example.com"}

    def test_module_decorator(self, app, klaviyo):
        @register_mapping("from-module")
        def from_module(request):
            return {"email": "module@example.com"}

        try:
            app.post(UPDATE, {"klaviyoProfileMapping": "from-module"}, headers=JSON)
        finally:
            del _registered["from-module"]
        assert profile_sent(klaviyo) == {"email": "module@example.com"}

    def test_mapping_output_is_validated(self, make_app, klaviyo):
        app = make_app(mappings={"bad": lambda request: {"email": "not an email"}})
        response = app.post(UPDATE, {"klaviyoProfileMapping": "bad"}, headers=JSON, status=400)
        assert response.json["errors"] == {"email": ["Enter a valid email address."]}

    def test_entry_point_group(self, make_app, klaviyo, tmp_path, monkeypatch):
        package = tmp_path / "site"
        package.mkdir()
        (package / "crm_mappings.py").write_text(textwrap.dedent("""
            def crm(request):
                return {"email": "crm@example.com", "extra": {"source": "crm"}}
        """))
        dist = package / "crm_mappings-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: crm-mappings\n"
                                       "Version: 1.0\n")
        (dist / "entry_points.txt").write_text(
            "[klaviyo_middleware.mappings]\ncrm = crm_mappings:crm\n")
        monkeypatch.syspath_prepend(str(package))
        assert any(point.name == "crm" for point in
                   metadata.entry_points(group="klaviyo_middleware.mappings"))
        app = make_app()
        app.post(UPDATE, {"klaviyoProfileMapping": "crm"}, headers=JSON)
        assert profile_sent(klaviyo) == {"email": "crm@example.com",
                                         "properties": {"source": "crm"}}
        sys.modules.pop("crm_mappings", None)


class TestBeforeSend:
    def test_hook_adds_and_changes_properties(self, make_app, klaviyo):
        def enrich(submission, request):
            submission.profile.setdefault("properties", {})["site"] = request.host
            submission.event.properties["page"] = "/signup"
            submission.event.name = "Signed up (web)"

        app = make_app(before_send=enrich)
        app.post(UPDATE, {"email": "a@example.com", "event[name]": "Signed up"}, headers=JSON)
        assert profile_sent(klaviyo)["properties"] == {"site": "localhost:80"}
        event = klaviyo.bodies("/api/events")[0]["data"]["attributes"]
        assert event["properties"] == {"page": "/signup"}
        assert event["metric"]["data"]["attributes"]["name"] == "Signed up (web)"

    @pytest.mark.parametrize("how", ["return", "raise"])
    def test_hook_cancels(self, make_app, klaviyo, inner, how):
        def cancel(submission, request):
            if how == "raise":
                raise CancelSubmission
            return False

        app = make_app(before_send=[cancel])
        response = app.post(UPDATE, {"email": "a@example.com", "forward": "/thanks"})
        assert klaviyo.calls == []
        assert inner.calls[-1]["result"]["cancelled"] is True
        assert inner.calls[-1]["result"]["success"] is True
        assert response.status_int == 200

    def test_decorator_and_order(self, make_app, klaviyo):
        seen = []
        app = make_app(before_send=lambda sub, req: seen.append("first"))

        @make_app.middleware.before_send
        def second(submission, request):
            seen.append("second")

        app.post(UPDATE, {"email": "a@example.com"}, headers=JSON)
        assert seen == ["first", "second"]

    def test_a_failing_hook_does_not_lose_the_submission(self, make_app, klaviyo, caplog):
        def broken(submission, request):
            raise KeyError("bug")

        app = make_app(before_send=broken)
        response = app.post(UPDATE, {"email": "a@example.com"}, headers=JSON)
        assert response.json["success"] is True
        assert klaviyo.paths() == ["/api/profile-import"]
        assert "before_send hook" in caplog.text

    def test_hooks_must_be_callable(self, make_app):
        with pytest.raises(TypeError):
            make_app(before_send=["not callable"])


def test_delivery_observers_through_the_middleware(make_app, klaviyo):
    delivered, dead = [], []
    app = make_app(on_delivered=delivered.append,
                   on_dead=lambda submission, error: dead.append(error.status))
    app.post(UPDATE, {"email": "a@example.com"}, headers=JSON)
    klaviyo.fail("/api/profile-import", 400)
    app.post(UPDATE, {"email": "b@example.com"}, headers=JSON, status=400)
    assert [sub.profile["email"] for sub in delivered] == ["a@example.com"]
    assert dead == [400]
