"""docs/pages-and-languages.md: every visitor-facing message in each
shipped language, chosen per visitor, overridable, and the catalogs in step
with the code."""

from __future__ import annotations

import gettext
import logging
import re
import string
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from klaviyo_middleware import ConfigurationError
from klaviyo_middleware.i18n.catalogs import DOMAIN, SHIPPED_LOCALE_DIR, Languages
from klaviyo_middleware.i18n.message import msg

PACKAGE = Path(__file__).resolve().parents[1] / "klaviyo_middleware"
SHIPPED = ("de", "fr", "es", "nl")
UPDATE = "/klaviyoConnect/api/updateProfile"


def marked_messages() -> set[str]:
    """Every msgid the code marks with msg(), found as `make messages` finds them."""
    found = set()
    for extracted in extract_from_dir(str(PACKAGE), keywords={"msg": None}):
        message = extracted[2]
        found.add(message[0] if isinstance(message, tuple) else message)
    return found


def po(language: str) -> Catalog:
    with open(SHIPPED_LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po", "rb") as file:
        return read_po(file, locale=language)


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


class TestCatalogs:
    def test_the_code_marks_messages(self):
        assert "Enter a valid email address." in marked_messages()
        assert len(marked_messages()) > 50

    @pytest.mark.parametrize("language", SHIPPED)
    def test_every_message_is_translated(self, language):
        catalog = po(language)
        translated = {message.id: message for message in catalog if message.id}
        missing = marked_messages() - set(translated)
        assert not missing, f"run `make messages` and translate: {sorted(missing)[:3]}"
        for message in translated.values():
            assert message.string, f"{language}: no translation for {message.id!r}"
            assert "fuzzy" not in message.flags, f"{language}: fuzzy {message.id!r}"

    @pytest.mark.parametrize("language", SHIPPED)
    def test_no_message_the_code_no_longer_has(self, language):
        stale = {message.id for message in po(language) if message.id} - marked_messages()
        assert not stale

    @pytest.mark.parametrize("language", SHIPPED)
    def test_translations_keep_the_placeholders(self, language):
        for message in po(language):
            if message.id:
                assert placeholders(message.string) == placeholders(message.id), message.id

    @pytest.mark.parametrize("language", SHIPPED)
    def test_the_compiled_catalog_matches_its_source(self, language):
        directory = SHIPPED_LOCALE_DIR / language / "LC_MESSAGES"
        with open(directory / f"{DOMAIN}.mo", "rb") as file:
            compiled = gettext.GNUTranslations(file)
        for message in po(language):
            if message.id:
                assert compiled.gettext(message.id) == message.string, "run `make messages`"

    def test_the_template_lists_every_message(self):
        with open(SHIPPED_LOCALE_DIR / f"{DOMAIN}.pot", "rb") as file:
            template = {message.id for message in read_po(file) if message.id}
        assert template == marked_messages()

    def test_french_puts_a_no_break_space_before_a_colon(self):
        for message in po("fr"):
            if message.id:
                assert not re.search(r"[^\u00a0\u202f:/]:(\s|$)", message.string), message.string


class TestMessage:
    def test_is_its_english_text(self):
        message = msg("Choose at most {count} lists.", count=3)
        assert message == "Choose at most 3 lists."
        assert isinstance(message, str)
        assert (message.msgid, message.params) == ("Choose at most {count} lists.", {"count": 3})

    def test_translated_with_its_values(self):
        assert Languages().translate(msg("Choose at most {count} lists.", count=3), "de") == \
            "Wählen Sie höchstens 3 Listen aus."

    def test_unmarked_text_passes_through(self):
        assert Languages().translate("A site's own words.", "fr") == "A site's own words."


class TestChoosingTheLanguage:
    @pytest.mark.parametrize(("header", "expected"), [
        ("de-AT,de;q=0.9,en;q=0.5", "de"),
        ("fr-CA", "fr"),
        ("es-419,es;q=0.8", "es"),
        ("nl-BE, en;q=0.3", "nl"),
        ("ja, en-GB;q=0.5", "en"),
        ("ja", "en"),
        ("", "en"),
        (";;;garbage", "en"),
    ])
    def test_from_accept_language(self, header, expected):
        assert Languages().negotiate(header) == expected

    def test_english_first_by_default(self):
        assert Languages().offered[0] == "en"
        assert set(Languages().offered) >= {"en", *SHIPPED}

    def test_the_first_offered_when_nothing_matches(self):
        assert Languages(["de", "en"]).negotiate("ja") == "de"

    def test_one_language_always(self):
        assert Languages(["fr"]).negotiate("de, en") == "fr"

    def test_a_language_without_a_catalog_fails_at_start_up(self, make_app):
        with pytest.raises(ConfigurationError, match="no catalog for 'it'"):
            make_app(languages="it en")

    def test_region_tags_from_a_site(self):
        assert Languages().offered_tag("de_CH") == "de"
        assert Languages().offered_tag("pt-BR") is None


class TestSiteCatalogsAndOverrides:
    def test_a_site_catalog_adds_a_language(self, tmp_path):
        compile_catalog(tmp_path, "it", {"Enter a valid email address.":
                                         "Inserisci un indirizzo email valido."})
        languages = Languages(["it", "en"], locale_dir=str(tmp_path))
        assert languages.translate(msg("Enter a valid email address."), "it") == \
            "Inserisci un indirizzo email valido."
        # What the site's catalog does not have stays English.
        assert languages.translate(msg("Unknown list."), "it") == "Unknown list."

    def test_a_site_catalog_rewords_a_shipped_language(self, tmp_path):
        compile_catalog(tmp_path, "de", {"Unknown list.": "Diese Liste gibt es nicht."})
        languages = Languages(locale_dir=str(tmp_path))
        assert languages.translate(msg("Unknown list."), "de") == "Diese Liste gibt es nicht."
        assert languages.translate(msg("Enter text."), "de") == "Geben Sie einen Text ein."

    def test_single_messages_overridden(self):
        languages = Languages(overrides={"de": {"Choose at most {count} lists.":
                                                "Bis zu {count} Listen."}})
        assert languages.translate(msg("Choose at most {count} lists.", count=2), "de") == \
            "Bis zu 2 Listen."

    def test_a_broken_override_falls_back_to_english(self):
        languages = Languages(overrides={"de": {"Choose at most {count} lists.": "{nope}"}})
        assert languages.translate(msg("Choose at most {count} lists.", count=2), "de") == \
            "Choose at most 2 lists."


def compile_catalog(directory: Path, language: str, texts: dict[str, str]) -> None:
    catalog = Catalog(locale=language, domain=DOMAIN)
    for msgid, text in texts.items():
        catalog.add(msgid, text)
    target = directory / language / "LC_MESSAGES"
    target.mkdir(parents=True)
    with open(target / f"{DOMAIN}.mo", "wb") as file:
        write_mo(file, catalog)


class TestThroughTheMiddleware:
    def test_german_json_errors(self, app, klaviyo):
        response = app.post(UPDATE, {"email": "nope"}, status=400,
                            headers={"Accept": "application/json", "Accept-Language": "de-DE"})
        assert response.json["errors"] == {"email": ["Geben Sie eine gültige E-Mail-Adresse ein."]}
        assert response.headers["Content-Language"] == "de"

    def test_english_without_accept_language(self, app, klaviyo):
        response = app.post(UPDATE, {"email": "nope"}, status=400,
                            headers={"Accept": "application/json"})
        assert response.json["errors"] == {"email": ["Enter a valid email address."]}

    def test_forwarded_errors_in_the_visitors_language(self, app, klaviyo, inner):
        app.post(UPDATE, {"email": "nope", "forward": "/signup"},
                 headers={"Accept-Language": "nl"})
        assert inner.calls[-1]["errors"] == {"email": ["Vul een geldig e-mailadres in."]}

    def test_the_sites_language_loader_wins(self, make_app, klaviyo):
        app = make_app(language_loader=lambda environ: "fr_FR")
        response = app.post(UPDATE, {"email": "nope"}, status=400,
                             headers={"Accept-Language": "de"})
        assert 'lang="fr"' in response.text
        assert "Saisissez une adresse e-mail valide." in response.text

    def test_a_failing_language_loader_falls_back(self, make_app, klaviyo, caplog):
        def broken(environ):
            raise RuntimeError("boom")

        app = make_app(language_loader=broken)
        with caplog.at_level(logging.ERROR):
            response = app.post(UPDATE, {"email": "nope"}, status=400,
                                headers={"Accept-Language": "es"})
        assert "Escriba una dirección de correo electrónico válida." in response.text
        assert "language_loader failed" in caplog.text

    def test_messages_keyword(self, make_app, klaviyo):
        app = make_app(messages={"en": {"Enter a valid email address.": "That email looks off."}})
        response = app.post(UPDATE, {"email": "nope"}, status=400,
                            headers={"Accept": "application/json"})
        assert response.json["errors"]["email"] == ["That email looks off."]


def test_the_language_is_chosen_once_per_refusal(make_app, klaviyo):
    asked = []

    def loader(environ):
        asked.append(environ["PATH_INFO"])
        return "de"

    app = make_app(language_loader=loader)
    app.post(UPDATE, {"email": "nope"}, status=400, headers={"Accept": "application/json"})
    app.post(UPDATE, {"email": "nope"}, status=400)
    assert asked == [UPDATE, UPDATE]


def test_only_a_browsers_worth_of_accept_language_is_negotiated(monkeypatch):
    """WebOb's parser is quadratic in the header's length: it never sees more
    than a few hundred characters, however long the header."""
    from klaviyo_middleware.i18n import catalogs

    seen: list[str] = []
    real = catalogs.create_accept_language_header

    def recording(header: str) -> object:
        seen.append(header)
        return real(header)

    monkeypatch.setattr(catalogs, "create_accept_language_header", recording)
    languages = catalogs.Languages(None, None, None)
    assert languages.negotiate("fr-CH, fr;q=0.9, " + "x-a;q=0.1, " * 100_000) == "fr"
    assert languages.negotiate(" " * 300 + "de") == "en"
    assert max(len(header) for header in seen) <= catalogs.MAX_ACCEPT_LANGUAGE
    assert max(header.count(",") for header in seen) < catalogs.MAX_LANGUAGE_TAGS
