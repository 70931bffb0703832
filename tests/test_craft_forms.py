"""Forms written for today's Craft plugin, posted unchanged through the whole stack.

Each test re-creates one form of the plugin's current documentation (its
template examples and its SMS recipe) with the Twig helpers replaced as
docs/migrating-from-craft.md says, posts it the two ways Craft sites do —
to the action path, and to the page with a hidden ``action`` field — and
checks what reaches the fake Klaviyo (every body validated against
Klaviyo's OpenAPI spec by the fixture) and where the visitor lands.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from html.parser import HTMLParser
from typing import Any, ClassVar

import pytest

from klaviyo_middleware import Submission, hidden_inputs

# The Craft site's security key: the middleware's secret, so that values
# Craft's redirectInput() hashed keep working.
SECURITY_KEY = "craft-security-key-from-the-env-file"
LIST = "AbC123"


def craft_hashed(url: str) -> str:
    """What Craft's redirectInput(url) writes: hex HMAC-SHA256, then the URL."""
    return hmac.new(SECURITY_KEY.encode(), url.encode(), hashlib.sha256).hexdigest() + url


@pytest.fixture(params=["action path", "action field"])
def post(request: Any, make_app: Any, klaviyo: Any) -> Any:
    """``post(route, fields, **options)`` the way a Craft form would."""

    def send(route: str, fields: dict[str, Any], status: int = 303, **options: Any) -> Any:
        options.setdefault("secret", SECURITY_KEY)
        if request.param == "action path":
            app = make_app(**options)
            return app.post(f"/actions/klaviyoconnect/api/{route}", fields, status=status)
        app = make_app(action_field=True, **options)
        return app.post("/newsletter", {"action": f"klaviyoconnect/api/{route}", **fields},
                        status=status)

    return send


def subscribers(klaviyo: Any) -> list[tuple[str, dict[str, Any]]]:
    """(list, profile attributes) of every subscribe job."""
    return [(body["data"]["relationships"]["list"]["data"]["id"], person["attributes"])
            for body in klaviyo.bodies("/api/profile-subscription-bulk-create-jobs")
            for person in body["data"]["attributes"]["profiles"]["data"]]


def imported(klaviyo: Any) -> list[dict[str, Any]]:
    return [body["data"]["attributes"] for body in klaviyo.bodies("/api/profile-import")]


class TestSignUpForAList:
    FORM: ClassVar[dict[str, str]] = {
        "redirect": craft_hashed("newsletter/thanks"), "list": LIST, "subscribe": "1",
        "email": "jane@example.com", "profile[phone_number]": "", "consent": "on"}

    def test_email_only(self, post, klaviyo):
        answer = post("track", self.FORM)
        assert answer.headers["Location"] == "/newsletter/thanks"
        assert imported(klaviyo) == [{"email": "jane@example.com"}]
        assert subscribers(klaviyo) == [(LIST, {
            "email": "jane@example.com",
            "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}})]

    def test_with_a_phone_number_the_site_chose_sms_consent_for(self, post, klaviyo):
        # Today's plugin subscribes the number to SMS too; here a site
        # chooses that knowingly with sms_consent="with_phone".
        post("track", {**self.FORM, "profile[phone_number]": "+1 415 555 2671"},
             sms_consent="with_phone")
        assert imported(klaviyo) == [{"email": "jane@example.com",
                                      "phone_number": "+14155552671"}]
        [(_, person)] = subscribers(klaviyo)
        assert person["subscriptions"] == {"email": {"marketing": {"consent": "SUBSCRIBED"}},
                                           "sms": {"marketing": {"consent": "SUBSCRIBED"}}}
        assert person["phone_number"] == "+14155552671"

    def test_by_default_a_phone_number_beside_an_email_gets_no_sms_consent(self, post,
                                                                          klaviyo):
        post("track", {**self.FORM, "profile[phone_number]": "+1 415 555 2671"})
        [(_, person)] = subscribers(klaviyo)
        assert list(person["subscriptions"]) == ["email"]
        # ...unless the form asks for it in so many words.
        post("track", {**self.FORM, "profile[phone_number]": "+1 415 555 2671",
                       "sms_consent": "1"})
        assert list(subscribers(klaviyo)[-1][1]["subscriptions"]) == ["email", "sms"]

    def test_without_subscribe_the_person_is_only_added(self, post, klaviyo):
        fields = {key: value for key, value in self.FORM.items() if key != "subscribe"}
        post("track", fields)
        assert subscribers(klaviyo) == []
        assert klaviyo.paths()[-1] == f"/api/lists/{LIST}/relationships/profiles"


def test_letting_the_visitor_choose_lists(post, klaviyo):
    post("track", {"redirect": craft_hashed("newsletter/thanks"), "subscribe": "1",
                   "email": "jane@example.com", "lists[]": ["L1", "L3"]})
    assert [list_id for list_id, _ in subscribers(klaviyo)] == ["L1", "L3"]


def test_updating_a_profile(post, klaviyo):
    answer = post("identify", {
        "redirect": craft_hashed("account"), "email": "jane@example.com",
        "profile[first_name]": "Jane", "profile[location][city]": "Leeds",
        "profile[properties][Favorite Color]": "Blue"})
    assert answer.headers["Location"] == "/account"
    assert imported(klaviyo) == [{"email": "jane@example.com", "first_name": "Jane",
                                  "location": {"city": "Leeds"},
                                  "properties": {"Favorite Color": "Blue"}}]
    assert klaviyo.paths() == ["/api/profile-import"]


class TestTrackingACustomEvent:
    FORM: ClassVar[dict[str, str]] = {"redirect": craft_hashed("contact/thanks"),
            "event[name]": "Submitted Contact Form", "email": "jane@example.com",
            "event[Topic]": "Returns"}

    def test_the_template_example(self, post, klaviyo):
        answer = post("track", self.FORM)
        assert answer.headers["Location"] == "/contact/thanks"
        (body,) = klaviyo.bodies("/api/events")
        attributes = body["data"]["attributes"]
        assert attributes["metric"]["data"]["attributes"]["name"] == "Submitted Contact Form"
        assert attributes["properties"] == {"Topic": "Returns"}
        assert attributes["profile"]["data"]["attributes"] == {"email": "jane@example.com"}

    def test_unique_id_value_and_timestamp(self, post, klaviyo):
        post("track", {**self.FORM, "event[unique_id]": "order-1001", "event[value]": "49.50",
                       "event[value_currency]": "EUR",
                       "event[timestamp]": "2026-01-15T09:30:00Z"})
        post("track", {**self.FORM, "event[unique_id]": "order-1001"})
        bodies = klaviyo.bodies("/api/events")
        first = bodies[0]["data"]["attributes"]
        assert (first["unique_id"], first["value"], first["value_currency"], first["time"]) \
            == ("order-1001", 49.5, "EUR", "2026-01-15T09:30:00+00:00")
        assert first["properties"] == {"Topic": "Returns"}
        # The same unique_id again: Klaviyo keeps one event.
        assert len(bodies) == 2 and len(klaviyo.events) == 1

    @pytest.mark.parametrize("timestamp", ["yesterday", "1989-12-31T00:00:00Z",
                                           "2999-01-01T00:00:00Z", "2026-13-01"])
    def test_an_unusable_timestamp_falls_back_with_a_warning(self, post, klaviyo, caplog,
                                                             timestamp):
        post("track", {**self.FORM, "event[timestamp]": timestamp})
        (body,) = klaviyo.bodies("/api/events")
        time = body["data"]["attributes"]["time"]
        assert time.startswith(("2026", "2027")) and time != timestamp
        assert "event[timestamp]" in caplog.text

    def test_an_event_prefix(self, post, klaviyo):
        post("track", self.FORM, event_prefix="Website: ")
        (body,) = klaviyo.bodies("/api/events")
        assert body["data"]["attributes"]["metric"]["data"]["attributes"]["name"] == \
            "Website: Submitted Contact Form"


def test_an_order_event_through_a_hook(post, klaviyo):
    """event[trackOrder] needs a shop; a before_send hook supplies the order."""
    orders = {"1001": {"OrderId": "1001", "ItemNames": ["Mug"], "value": 12.0}}

    def track_order(submission: Submission, request: Any) -> None:
        event = submission.event
        if event is not None and event.properties.pop("trackOrder", None):
            order = orders[event.properties.pop("orderNumber")]
            event.properties = {key: value for key, value in order.items() if key != "value"}
            event.value = order["value"]
            event.unique_id = f"shipping-updates-{order['OrderId']}"

    post("track", {"redirect": craft_hashed("shop/order?number=1001"),
                   "event[name]": "Requested Shipping Updates", "event[trackOrder]": "1",
                   "event[orderNumber]": "1001", "email": "jane@example.com"},
         before_send=track_order)
    (body,) = klaviyo.bodies("/api/events")
    attributes = body["data"]["attributes"]
    assert attributes["properties"] == {"OrderId": "1001", "ItemNames": ["Mug"]}
    assert (attributes["value"], attributes["unique_id"]) == (12.0, "shipping-updates-1001")


def test_saving_the_shoppers_email_on_the_cart(post, inner, klaviyo):
    answer = post("identify", {"forward": "/commerce/cart/update-cart",
                               "redirect": craft_hashed("shop/checkout/address"),
                               "email": "jane@example.com"}, status=200)
    assert inner.calls[-1]["path"] == "/commerce/cart/update-cart"
    assert b"email=jane%40example.com" in inner.calls[-1]["body"]
    assert answer.body.startswith(b"inner:/commerce/cart/update-cart:")
    assert imported(klaviyo) == [{"email": "jane@example.com"}]


class TestTheSmsRecipe:
    FORM: ClassVar[dict[str, str]] = {
        "redirect": craft_hashed("sms/thanks"), "list": LIST, "subscribe": "1",
        "profile[phone_number]": "+14155552671"}

    def test_a_phone_number_alone_subscribes_to_sms(self, post, klaviyo):
        answer = post("track", self.FORM)
        assert answer.headers["Location"] == "/sms/thanks"
        assert imported(klaviyo) == [{"phone_number": "+14155552671"}]
        assert subscribers(klaviyo) == [(LIST, {
            "phone_number": "+14155552671",
            "subscriptions": {"sms": {"marketing": {"consent": "SUBSCRIBED"}}}})]
        assert klaviyo.sms_subscribed == {LIST: {"+14155552671"}}

    def test_adding_profile_email_with_sms_consent(self, post, klaviyo):
        post("track", {**self.FORM, "profile[email]": "jane@example.com",
                       "sms_consent": "1"})
        [(_, person)] = subscribers(klaviyo)
        assert set(person["subscriptions"]) == {"email", "sms"}

    def test_a_phone_number_alone_cannot_just_be_added_to_a_list(self, post, klaviyo):
        fields = {**self.FORM, "subscribe": "0"}
        answer = post("track", {**fields, "redirect": "/sms/thanks"}, status=400,
                      secret=None)
        assert "Enter your email address" in answer.text
        assert klaviyo.calls == []


class TestRedirects:
    def test_site_relative_under_a_script_name(self, make_app, klaviyo):
        app = make_app(secret=SECURITY_KEY)
        answer = app.post("/actions/klaviyoconnect/api/identify",
                          {"email": "a@example.com", "redirect": craft_hashed("newsletter/thanks")},
                          extra_environ={"SCRIPT_NAME": "/shop"})
        assert answer.headers["Location"] == "/shop/newsletter/thanks"

    @pytest.mark.parametrize("target, location", [
        ("/über-uns", "/%C3%BCber-uns"),
        ("über-uns?tab=kontakt", "/%C3%BCber-uns?tab=kontakt"),
        ("/café/menü#oben", "/caf%C3%A9/men%C3%BC#oben"),
        ("/日本語", "/%E6%97%A5%E6%9C%AC%E8%AA%9E"),
        ("https://shop.example.com/ünterseite", "https://shop.example.com/%C3%BCnterseite"),
    ])
    def test_non_ascii_paths_are_encoded_not_refused(self, make_app, klaviyo, target,
                                                     location):
        app = make_app(allowed_hosts=["shop.example.com"])
        answer = app.post("/klaviyoConnect/api/identify",
                          {"email": "a@example.com", "redirect": target})
        assert answer.headers["Location"] == location

    @pytest.mark.parametrize("target", [
        "/\uff0fevil.example", "\uff0f\uff0fevil.example", "/\u2215\u2215evil.example",
        "evil\u3002example", "/x\u200bx", "/\u202eevil", "/x\u3000/evil", "https://\uff45vil.example/",
        "javascript%3Aalert(1)", "%2F%2Fevil.example", "/%EF%BC%8Fevil.example",
    ])
    def test_look_alikes_never_become_a_second_slash_or_host(self, make_app, klaviyo, target):
        app = make_app(allowed_hosts=["shop.example.com"])
        answer = app.post("/klaviyoConnect/api/identify",
                          {"email": "a@example.com", "redirect": target}, status=400)
        assert "redirect" in answer.text.lower() or "address" in answer.text.lower()

    def test_a_value_hashed_with_another_key_is_refused(self, make_app, klaviyo):
        app = make_app(secret=SECURITY_KEY)
        forged = hmac.new(b"other", b"/thanks", hashlib.sha256).hexdigest() + "/thanks"
        app.post("/klaviyoConnect/api/identify", {"email": "a@example.com",
                                                  "redirect": forged}, status=400)


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("type") == "hidden":
            self.fields.append((values["name"] or "", values["value"] or ""))


def parse_inputs(html: str) -> list[tuple[str, str]]:
    parser = _Inputs()
    parser.feed(html)
    return parser.fields


class TestTemplateHelpers:
    def test_hidden_inputs_escape_and_sign(self):
        html = hidden_inputs("track", redirect="newsletter/thanks", list=LIST, subscribe=True,
                             secret=SECURITY_KEY, fields={"event[name]": 'Said "hi" <b>'})
        assert parse_inputs(html) == [
            ("action", "klaviyoconnect/api/track"),
            ("redirect", craft_hashed("newsletter/thanks")),
            ("list", LIST), ("subscribe", "1"), ("event[name]", 'Said "hi" <b>')]
        assert "<b>" not in html and html.__html__() == html

    def test_unknown_actions_are_refused(self):
        with pytest.raises(ValueError, match="not a Klaviyo Connect action"):
            hidden_inputs("subscribe-everyone")

    def test_jinja2_form_reaches_klaviyo(self, make_app, klaviyo):
        jinja2 = pytest.importorskip("jinja2")
        from klaviyo_middleware.web.form_inputs import jinja2_helper

        env = jinja2.Environment(autoescape=True)
        env.globals["klaviyo_inputs"] = jinja2_helper(secret=SECURITY_KEY)
        page = env.from_string(
            '<form method="post">{{ klaviyo_inputs("track", redirect="newsletter/thanks", '
            'list="AbC123", subscribe=True) }}<input name="email"></form>').render()
        fields = dict(parse_inputs(page))
        assert fields["action"] == "klaviyoconnect/api/track"
        app = make_app(action_field=True, secret=SECURITY_KEY)
        answer = app.post("/newsletter", {**fields, "email": "jane@example.com"})
        assert answer.headers["Location"] == "/newsletter/thanks"
        assert [list_id for list_id, _ in subscribers(klaviyo)] == [LIST]

    def test_django_template_tag_reaches_klaviyo(self, make_app, klaviyo):
        pytest.importorskip("django")
        import django
        from django.conf import settings
        from django.template import Context, Engine

        if not settings.configured:
            settings.configure(KLAVIYO_MIDDLEWARE={"secret": SECURITY_KEY},
                               INSTALLED_APPS=["klaviyo_middleware.contrib.django"])
            django.setup()
        engine = Engine(libraries={
            "klaviyo_connect": "klaviyo_middleware.contrib.django.templatetags.klaviyo_connect"})
        page = engine.from_string(
            '{% load klaviyo_connect %}<form method="post">'
            '{% klaviyo_inputs "track" redirect="newsletter/thanks" lists="L1,L2" '
            'subscribe=True %}</form>').render(Context())
        fields = parse_inputs(page)
        assert ("lists[]", "L1") in fields and ("lists[]", "L2") in fields
        assert re.fullmatch(r"[0-9a-f]{64}newsletter/thanks", dict(fields)["redirect"])
        app = make_app(action_field=True, secret=SECURITY_KEY)
        answer = app.post("/newsletter", [*fields, ("email", "jane@example.com")])
        assert answer.headers["Location"] == "/newsletter/thanks"
        assert [list_id for list_id, _ in subscribers(klaviyo)] == ["L1", "L2"]


def test_a_hashed_redirect_without_a_secret_still_lands(make_app, klaviyo, caplog):
    """A cached Craft page's redirectInput() value, on a site not yet given
    the security key: the visitor lands on the page, the log says what to set."""
    app = make_app(action_field=True)
    for target in ("account", "newsletter/thanks"):
        answer = app.post("/newsletter", {"action": "klaviyoconnect/api/identify",
                                          "email": "jane@example.com",
                                          "redirect": craft_hashed(target)})
        assert answer.headers["Location"] == f"/{target}"
    assert caplog.text.count("set secret to the Craft site's security key") == 1
