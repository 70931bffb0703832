"""The Django site under Django's own test runner (``python -m django test``),
with requests passing through the middleware configured in settings.py."""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.test import TestCase, override_settings

from klaviyo_middleware.contrib.django.checks import (
    E_INVALID,
    E_NO_TEMPLATE,
    W_NOT_WRAPPED,
    check_settings,
)
from klaviyo_middleware.contrib.django.test import Client
from klaviyo_middleware.testing import RunningFakeKlaviyo, serve_fake_klaviyo

UPDATE = "/klaviyoConnect/api/updateProfile"


class FakeKlaviyoTestCase(TestCase):
    client_class = Client
    fake: ClassVar[RunningFakeKlaviyo]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls._serving = serve_fake_klaviyo(lists={"Y6nRLr": "single_opt_in"})
        cls.fake = cls._serving.__enter__()
        from django.conf import settings

        cls._settings = override_settings(KLAVIYO_MIDDLEWARE={
            **settings.KLAVIYO_MIDDLEWARE, "api_url": cls.fake.url, "delivery": "sync"})
        cls._settings.enable()

    @classmethod
    def tearDownClass(cls) -> None:
        cls._settings.disable()
        cls._serving.__exit__(None, None, None)
        super().tearDownClass()

    def setUp(self) -> None:
        self.fake.fake.state.reset()

    def profiles(self) -> list[dict[str, Any]]:
        return self.fake.snapshot()["profiles"]


class SignupTests(FakeKlaviyoTestCase):
    def test_the_form_renders_with_the_template_tag(self) -> None:
        response = self.client.get("/")
        self.assertTemplateUsed(response, "signup.html")
        self.assertContains(response, '<input type="hidden" name="list" value="Y6nRLr">', html=True)

    def test_signup_reaches_klaviyo_and_forwards_to_the_view(self) -> None:
        response = self.client.post(UPDATE, {"email": "ada@example.com", "list": "Y6nRLr",
                                             "subscribe": "1", "forward": "/signed-up/"})
        self.assertEqual(response.status_code, 200)
        self.assertTemplateUsed(response, "signed_up.html")
        self.assertTrue(response.context["result"]["delivered"])
        [profile] = self.profiles()
        self.assertEqual(profile["email"], "ada@example.com")
        # The before_send hook named by a dotted path in the settings ran.
        self.assertEqual(profile["properties"]["Signed up on"], "django_site")

    def test_a_form_posting_to_its_own_page_with_the_tags_action(self) -> None:
        # {% klaviyo_inputs "track" %} writes a hidden action and the form
        # posts to its page: the integration reads that field by default.
        response = self.client.post("/", {"action": "klaviyoconnect/api/track",
                                          "email": "ada@example.com", "list": "Y6nRLr",
                                          "subscribe": "1"})
        self.assertIn(response.status_code, (200, 303))
        [profile] = self.profiles()
        self.assertEqual(profile["email"], "ada@example.com")

    def test_klaviyo_craft_compat_as_a_setting_of_its_own(self) -> None:
        with override_settings(KLAVIYO_CRAFT_COMPAT=True):
            response = self.client.post("/", {"action": "klaviyoconnect/api/track",
                                              "email": "ada@example.com", "list": "Y6nRLr"},
                                        headers={"X-Requested-With": "XMLHttpRequest"})
        self.assertEqual(response.json(), "success")

    def test_errors_are_forwarded_to_the_view_in_the_visitors_language(self) -> None:
        response = self.client.post(UPDATE, {"email": "nope", "forward": "/signed-up/"},
                                    headers={"accept-language": "de"})
        self.assertEqual(response.status_code, 400)
        self.assertContains(response, "Geben Sie eine gültige E-Mail-Adresse ein.", status_code=400)
        self.assertEqual(self.profiles(), [])

    def test_error_page_in_the_sites_template_and_language(self) -> None:
        response = self.client.post(UPDATE, {"email": "nope"},
                                    headers={"accept-language": "de-DE,de;q=0.9"})
        self.assertEqual(response.status_code, 400)
        body = response.content.decode()
        self.assertIn('<body class="django-site">', body)
        self.assertIn('<html lang="de">', body)
        self.assertIn("E-Mail-Adresse: Geben Sie eine gültige E-Mail-Adresse ein.", body)

    def test_django_language_cookie_wins(self) -> None:
        self.client.cookies["django_language"] = "de"
        response = self.client.post(UPDATE, {"email": "nope"},
                                    headers={"accept-language": "en"})
        self.assertIn("Bitte prüfen Sie das Formular", response.content.decode())

    def test_other_requests_are_djangos(self) -> None:
        response = self.client.get("/no-such-page/")
        self.assertEqual(response.status_code, 404)


class SignedInUserTests(FakeKlaviyoTestCase):
    def test_the_user_mapping_is_the_signed_in_user(self) -> None:
        user = User.objects.create_user("grace", "grace@example.com", "pw",
                                        first_name="Grace", last_name="Hopper")
        self.client.force_login(user)
        response = self.client.post(UPDATE, {"klaviyoProfileMapping": "user",
                                             "email": "someone-else@example.com",
                                             "list": "Y6nRLr"},
                                    headers={"accept": "application/json"})
        self.assertEqual(response.status_code, 200, response.content)
        [profile] = self.profiles()
        self.assertEqual((profile["email"], profile["first_name"], profile["external_id"]),
                         ("grace@example.com", "Grace", str(user.pk)))

    def test_nobody_signed_in(self) -> None:
        response = self.client.post(UPDATE, {"klaviyoProfileMapping": "user",
                                             "email": "someone-else@example.com"},
                                    headers={"accept": "application/json"})
        self.assertEqual(response.status_code, 400)
        self.assertEqual(response.json()["errors"], {"email": ["Sign in to continue."]})
        self.assertEqual(self.profiles(), [])


class SettingsCheckTests(TestCase):
    def test_the_sites_settings_pass(self) -> None:
        self.assertEqual(check_settings(), [])
        self.assertEqual([m for m in run_checks() if m.id.startswith("klaviyo")], [])

    def test_a_bad_value_is_a_check_error(self) -> None:
        with override_settings(KLAVIYO_MIDDLEWARE={"api_key": "pk_x" * 10, "delivery": "mail"}):
            [error] = check_settings()
        self.assertEqual(error.id, E_INVALID)
        self.assertIn("delivery", error.msg)

    def test_a_misspelt_name_is_named_with_a_suggestion(self) -> None:
        with override_settings(KLAVIYO_MIDDLEWARE={"api_key": "pk_x" * 10, "alowed_hosts": []}):
            [error] = check_settings()
        self.assertIn("did you mean 'allowed_hosts'", error.msg)

    def test_a_dotted_path_that_does_not_import(self) -> None:
        with override_settings(KLAVIYO_MIDDLEWARE={"api_key": "pk_x" * 10,
                                                   "before_send": ["django_site.nope.hook"]}):
            [error] = check_settings()
        self.assertIn("cannot import 'django_site.nope.hook'", error.msg)

    def test_a_language_without_a_catalog(self) -> None:
        with override_settings(KLAVIYO_MIDDLEWARE={"api_key": "pk_x" * 10, "languages": ["it"]}):
            [error] = check_settings()
        self.assertIn("no catalog for 'it'", error.msg)

    def test_a_page_template_that_is_not_there(self) -> None:
        from django.conf import settings

        with override_settings(KLAVIYO_MIDDLEWARE={**settings.KLAVIYO_MIDDLEWARE,
                                                   "page_template": "klaviyo/missing.html"}):
            [error] = check_settings()
        self.assertEqual(error.id, E_NO_TEMPLATE)
        self.assertIn("'klaviyo/missing.html'", error.msg)
        self.assertIn("templates/klaviyo/missing.html", error.hint)

    def test_djangos_own_wsgi_py_left_in_place(self) -> None:
        for target in ("django_site.plain_wsgi.application", None):
            with override_settings(WSGI_APPLICATION=target):
                [warning] = check_settings()
            self.assertEqual(warning.id, W_NOT_WRAPPED)
            self.assertIn("ASGI is not served", warning.hint)

    def test_missing_key_is_a_warning(self) -> None:
        with override_settings(KLAVIYO_MIDDLEWARE={}):
            [warning] = check_settings()
        self.assertEqual(warning.id, "klaviyo_middleware.W001")


class ForwardWithoutCsrfTokenTests(FakeKlaviyoTestCase):
    """A form that forwards to a view but forgot {% csrf_token %}."""

    def setUp(self) -> None:
        super().setUp()
        self.client = Client(enforce_csrf_checks=True)

    def post_signup(self) -> Any:
        return self.client.post(UPDATE, {"email": "lin@example.com", "forward": "/signed-up/"},
                                headers={"accept-language": "de"})

    def test_djangos_own_page_without_the_view(self) -> None:
        response = self.post_signup()
        self.assertEqual(response.status_code, 403)
        # The data was sent all the same: this is what the view exists for.
        self.assertEqual([p["email"] for p in self.profiles()], ["lin@example.com"])

    def test_the_visitor_sees_thanks_for_data_that_was_sent(self) -> None:
        with override_settings(CSRF_FAILURE_VIEW="klaviyo_middleware.contrib.django.views."
                                                 "csrf_failure"), \
                self.assertLogs("klaviyo_middleware.contrib.django.views", "WARNING") as logs:
            response = self.post_signup()
        self.assertEqual(response.status_code, 200)
        self.assertContains(response, "Ihre Angaben wurden gespeichert.")
        self.assertIn("add {% csrf_token %} to the form", logs.output[0])
        self.assertEqual([p["email"] for p in self.profiles()], ["lin@example.com"])

    def test_other_csrf_failures_keep_djangos_answer(self) -> None:
        with override_settings(CSRF_FAILURE_VIEW="klaviyo_middleware.contrib.django.views."
                                                 "csrf_failure"):
            response = self.client.post("/login/", {"username": "x", "password": "y"})
        self.assertEqual(response.status_code, 403)


class OneMiddlewarePerConfigurationTests(FakeKlaviyoTestCase):
    def test_requests_share_the_middleware(self) -> None:
        from klaviyo_middleware.contrib.django import test as client_module

        self.client.post(UPDATE, {"email": "nope"})
        before = dict(client_module._middlewares)
        for _ in range(3):
            Client().post(UPDATE, {"email": "nope"})
        self.assertEqual(client_module._middlewares, before)


class SiteLanguagesTests(TestCase):
    def test_languages_the_site_added_itself_are_offered(self) -> None:
        from klaviyo_middleware.contrib.django.conf import site_languages

        with override_settings(LANGUAGES=[("en", "English"), ("it", "Italiano"),
                                          ("de", "Deutsch")], LANGUAGE_CODE="en"):
            self.assertEqual(site_languages(), ("en", "de"))
            # Italian through the site's own words (a catalog in locale_dir works alike).
            self.assertEqual(site_languages(None, {"it": {"Thank you": "Grazie"}}),
                             ("en", "it", "de"))


class UnwrappedSiteTests(FakeKlaviyoTestCase):
    """A server that runs Django's own application (wsgi.py not wrapped):
    the form reaches Django, and the log says why nothing was sent, once."""

    def test_a_form_reaching_django_itself_is_reported_once(self) -> None:
        from django.test import Client as PlainClient

        from klaviyo_middleware import notices

        notices.forget_all()
        with self.assertLogs("klaviyo_middleware", level="ERROR") as logged:
            for _ in range(2):
                PlainClient().post(UPDATE, {"email": "ada@example.com"})
        said = [line for line in logged.output if "does not wrap" in line]
        self.assertEqual(len(said), 1, logged.output)
        self.assertIn("get_wsgi_application", said[0])
        self.assertEqual(self.profiles(), [])

    def test_a_wrapped_site_says_nothing(self) -> None:
        from klaviyo_middleware import notices

        notices.forget_all()
        with self.assertNoLogs("klaviyo_middleware.contrib.django.apps", level="ERROR"):
            self.client.post(UPDATE, {"email": "ada@example.com", "forward": "/signed-up/"})
