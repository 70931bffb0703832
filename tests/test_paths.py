"""Which paths and methods are intercepted: every spelling the plugin has used."""

from __future__ import annotations

import pytest

# The plugin's handle in each era, and its renamed successor's.
HANDLES = ["klaviyoConnect", "klaviyoconnect", "klaviyo-connect", "klaviyo-connect-plus"]


def spellings(*names: str, controller: str = "api") -> list[str]:
    """Every handle and name, with and without /actions and a trailing slash."""
    return [f"{prefix}{handle}/{controller}/{name}{slash}"
            for handle in HANDLES for name in names
            for prefix in ("/", "/actions/") for slash in ("", "/")]


IDENTIFY_PATHS = spellings("identify")
# The first era's names: a form without confirmOptIn subscribes.
UPDATE_PATHS = (spellings("updateProfile", "update-profile")
                # The first README's list sign-up, before updateProfile existed.
                + spellings("addToLists", controller="lists"))
# Today's name: a form without subscribe only adds to the list.
TRACK_PATHS = spellings("track")


def test_every_spelling_is_one_lookup():
    from klaviyo_middleware.web.routes import ACTION_PATHS

    assert set(ACTION_PATHS) == set(IDENTIFY_PATHS + UPDATE_PATHS + TRACK_PATHS)
    assert len(ACTION_PATHS) == 4 * 5 * 2 * 2


@pytest.mark.parametrize("path", IDENTIFY_PATHS)
def test_identify_paths(app, klaviyo, inner, path):
    response = app.post(path, {"email": "a@example.com", "lists[]": "ListA"},
                        headers={"Accept": "application/json"})
    assert response.json["action"] == "identify"
    # identify sends the profile only, whatever else the form carries.
    assert klaviyo.paths() == ["/api/profile-import"]
    assert inner.calls == []


@pytest.mark.parametrize("path", UPDATE_PATHS)
def test_update_profile_paths(app, klaviyo, path):
    response = app.post(path, {"email": "a@example.com", "lists[]": "ListA"},
                        headers={"Accept": "application/json"})
    # The answer names the action as the form posted it.
    assert response.json["action"] == path.strip("/").rsplit("/", 1)[-1]
    assert klaviyo.paths() == [
        "/api/profile-import", "/api/profile-subscription-bulk-create-jobs"
    ]


@pytest.mark.parametrize("path", TRACK_PATHS)
def test_track_paths_add_to_the_list_unless_asked_to_subscribe(app, klaviyo, path):
    response = app.post(path, {"email": "a@example.com", "list": "ListA"},
                        headers={"Accept": "application/json"})
    assert response.json["action"] == "track"
    assert klaviyo.paths() == ["/api/profile-import", "/api/lists/ListA/relationships/profiles"]
    app.post(path, {"email": "b@example.com", "list": "ListA", "subscribe": "1"})
    assert klaviyo.paths()[-1] == "/api/profile-subscription-bulk-create-jobs"


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", [IDENTIFY_PATHS[0], UPDATE_PATHS[2]])
def test_other_methods_get_405_with_allow(app, klaviyo, inner, method, path):
    response = app.request(path, method=method, expect_errors=True)
    assert response.status_int == 405
    assert response.headers["Allow"] == "POST"
    assert klaviyo.calls == [] and inner.calls == []


class TestActionField:
    def test_off_by_default(self, app, klaviyo, inner):
        response = app.post("/newsletter", {"action": "klaviyoConnect/api/identify",
                                            "email": "a@example.com"})
        assert response.body.startswith(b"inner:/newsletter:")
        assert klaviyo.calls == []

    @pytest.mark.parametrize(
        "value", ["klaviyoConnect/api/identify", "/klaviyo-connect/api/identify",
                  "actions/klaviyoConnect/api/identify", "klaviyoconnect/api/identify",
                  " klaviyoconnect/api/identify/"]
    )
    def test_urlencoded_action_field_on_any_path(self, make_app, klaviyo, inner, value):
        app = make_app(action_field=True)
        response = app.post("/newsletter", {"action": value, "email": "a@example.com"},
                            headers={"Accept": "application/json"})
        assert response.json["action"] == "identify"
        assert klaviyo.paths() == ["/api/profile-import"]
        assert inner.calls == []

    def test_multipart_action_field(self, make_app, klaviyo):
        app = make_app(action_field=True)
        response = app.post(
            "/page",
            {"action": "klaviyoConnect/api/updateProfile", "email": "a@example.com",
             "list": "ListA"},
            upload_files=[("cv", "cv.txt", b"file content ignored")],
            headers={"Accept": "application/json"},
        )
        assert response.json["action"] == "updateProfile"
        assert klaviyo.paths()[0] == "/api/profile-import"
        assert "cv" not in str(klaviyo.calls[0].body)

    def test_todays_action_input(self, make_app, klaviyo, inner):
        # {{ actionInput('klaviyoconnect/api/track') }} on a form posted to its page.
        app = make_app(action_field=True)
        response = app.post("/newsletter", {"action": "klaviyoconnect/api/track",
                                            "email": "a@example.com", "list": "ListA",
                                            "subscribe": "1"},
                            headers={"Accept": "application/json"})
        assert response.json["action"] == "track"
        assert klaviyo.paths() == ["/api/profile-import",
                                   "/api/profile-subscription-bulk-create-jobs"]
        assert inner.calls == []

    def test_other_form_posts_still_reach_the_app_with_their_body(self, make_app, klaviyo,
                                                                  inner):
        app = make_app(action_field=True)
        response = app.post("/contact", {"action": "contact/send", "message": "hi"})
        assert response.body == b"inner:/contact:action=contact%2Fsend&message=hi"
        assert klaviyo.calls == []

    def test_json_bodies_are_read_as_craft_reads_them(self, make_app, klaviyo, inner):
        # A Nuxt block posting JSON to the page, action and all.
        app = make_app(action_field=True)
        response = app.post_json("/api/thing", {"action": "klaviyoconnect/api/track",
                                                "email": "a@example.com", "list": "ListA",
                                                "subscribe": 1})
        assert response.json["action"] == "track"
        assert klaviyo.paths() == ["/api/profile-import",
                                   "/api/profile-subscription-bulk-create-jobs"]
        assert inner.calls == []

    def test_json_without_a_klaviyo_action_reaches_the_app_whole(self, make_app, klaviyo,
                                                                inner):
        app = make_app(action_field=True)
        response = app.post_json("/api/thing", {"action": "cart/add", "qty": 2})
        assert response.body == b'inner:/api/thing:{"action": "cart/add", "qty": 2}'
        assert klaviyo.calls == []

    def test_oversized_bodies_pass_through_unread(self, make_app, klaviyo, inner):
        app = make_app(action_field=True, max_body_size=100)
        body = "action=klaviyoConnect/api/identify&email=a@example.com&pad=" + "x" * 200
        response = app.post("/upload", body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.body == b"inner:/upload:" + body.encode()
        assert klaviyo.calls == []

    def test_unparseable_bodies_pass_through(self, make_app, klaviyo, inner):
        app = make_app(action_field=True)
        body = b"action=klaviyoConnect/api/identify&bad=\xff\xfe"
        response = app.post("/page", body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.body == b"inner:/page:" + body
        assert klaviyo.calls == []


def test_action_field_leaves_chunked_bodies_to_the_app(make_app, klaviyo, inner):
    """Without a Content-Length the body is not ours to read: untouched, never a 500."""
    import io

    import webob

    class ServerStream:
        """Like a server's socket reader: readable once, not seekable."""

        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

        def readline(self, size: int = -1) -> bytes:
            return self._data.readline(size)

        def readlines(self, hint: int = -1) -> list[bytes]:
            return self._data.readlines(hint)

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(self._data)

    app = make_app(action_field=True, max_body_size=10)
    body = b"action=klaviyoConnect/api/identify&email=a%40example.com&pad=xxxxxxxx"
    request = webob.Request.blank("/page", method="POST",
                                  content_type="application/x-www-form-urlencoded")
    stream = ServerStream(body)
    request.environ.update({"CONTENT_LENGTH": "", "wsgi.input_terminated": True,
                            "wsgi.input": stream})
    response = app.do_request(request)
    assert response.status_int == 200
    assert stream.read() == body  # nothing consumed: the app can still read it all
    assert klaviyo.calls == []
    assert inner.calls[-1]["path"] == "/page"
