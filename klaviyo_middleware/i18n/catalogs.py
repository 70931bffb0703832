"""Which language a visitor reads, and the gettext catalogs that translate into it.

Catalogs are standard GNU gettext ``.mo`` files in the domain
``klaviyo_middleware`` (docs/pages-and-languages.md shows Babel's
workflow for adding one). The package ships English, German, French,
Spanish and Dutch in ``klaviyo_middleware/locale``; a site's own
``locale_dir`` is searched first, so it can add languages or reword ours,
and single messages can be replaced without a catalog (``messages=``).

Everything here is decided at start-up; a request only looks a language up.
"""

from __future__ import annotations

import gettext
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from webob.acceptparse import create_accept_language_header

from klaviyo_middleware.errors import ConfigurationError

DOMAIN = "klaviyo_middleware"
SHIPPED_LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
# The language the messages are written in: no catalog needed.
SOURCE_LANGUAGE = "en"
# What of an Accept-Language header is negotiated (bounded_accept_language).
MAX_ACCEPT_LANGUAGE = 256
MAX_LANGUAGE_TAGS = 16

Overrides = Mapping[str, Mapping[str, str]]


def shipped_languages() -> tuple[str, ...]:
    """The languages this package has catalogs for, English first."""
    return available_languages()


def available_languages(locale_dir: str | None = None,
                        overrides: Overrides | None = None) -> tuple[str, ...]:
    """Every language the middleware can speak, English first: the shipped
    catalogs, a site's own in ``locale_dir``, and the languages of
    ``overrides`` (``messages=``)."""
    found = {SOURCE_LANGUAGE, *(_tag(language) for language in overrides or {})}
    for directory in _directories(locale_dir):
        found.update(path.parent.parent.name
                     for path in directory.glob(f"*/LC_MESSAGES/{DOMAIN}.mo"))
    return (SOURCE_LANGUAGE, *sorted(found - {SOURCE_LANGUAGE}))


def _directories(locale_dir: str | None) -> list[Path]:
    """Where catalogs are searched, the site's first."""
    return [*([Path(locale_dir)] if locale_dir else []), SHIPPED_LOCALE_DIR]


class Languages:
    """The languages a site offers its visitors, and how to speak each.

    :param offered: language tags, the first being the one used when a
        visitor's ``Accept-Language`` names none of them; ``None`` offers
        every language there is a catalog for, English first.
    :param locale_dir: a directory of the site's own catalogs
        (``<dir>/<lang>/LC_MESSAGES/klaviyo_middleware.mo``), searched
        before the shipped ones.
    :param overrides: ``{language: {English message: replacement}}``.
    """

    def __init__(
        self,
        offered: Iterable[str] | None = None,
        locale_dir: str | None = None,
        overrides: Overrides | None = None,
    ) -> None:
        self.overrides = {_tag(language): dict(texts)
                          for language, texts in (overrides or {}).items()}
        available = available_languages(locale_dir, overrides)
        if offered is None:
            self.offered: tuple[str, ...] = available
        else:
            self.offered = tuple(_tag(language) for language in offered)
            missing = [tag for tag in self.offered if tag not in available]
            if missing:
                raise ConfigurationError(
                    f"languages: no catalog for {missing[0]!r}; shipped: "
                    f"{', '.join(shipped_languages())} (add one in locale_dir, see the "
                    f"docs/pages-and-languages.md)")
            if not self.offered:
                raise ConfigurationError("languages must name at least one language")
        self._catalogs = {tag: _catalog(tag, _directories(locale_dir)) for tag in self.offered}

    @property
    def default(self) -> str:
        return self.offered[0]

    def negotiate(self, accept_language: str | None) -> str:
        """The offered language the visitor prefers most (RFC 4647 lookup:
        ``de-AT`` finds ``de``), else the first offered."""
        if len(self.offered) == 1 or not accept_language:
            return self.default
        header = create_accept_language_header(bounded_accept_language(accept_language))
        chosen = header.lookup(language_tags=self.offered, default=self.default)
        return str(chosen)

    def offered_tag(self, language: str) -> str | None:
        """The offered tag for a language a site chose (``de_AT`` → ``de``),
        or ``None`` when it is not offered."""
        chosen = create_accept_language_header(
            bounded_accept_language(language.replace("_", "-"))).lookup(
            language_tags=self.offered, default="")
        return str(chosen) or None

    def translate(self, text: str, language: str) -> str:
        """``text`` in ``language``: the override, else the catalog's
        translation, with the message's values filled in; text we have no
        translation for (a site hook's own message) stays as it is."""
        msgid: str = getattr(text, "msgid", text)
        params: dict[str, Any] = getattr(text, "params", {})
        replacement = self.overrides.get(language, {}).get(msgid)
        if replacement is None:
            catalog = self._catalogs.get(language)
            replacement = catalog.gettext(msgid) if catalog is not None else msgid
        if not params:
            return replacement
        try:
            return replacement.format(**params)
        except (KeyError, IndexError, ValueError):
            # A site's override with a wrong placeholder: the English text
            # rather than an error page about an error page.
            return str(text)


def bounded_accept_language(header: str) -> str:
    """The first :data:`MAX_LANGUAGE_TAGS` tags of an ``Accept-Language``,
    within :data:`MAX_ACCEPT_LANGUAGE` characters.

    Browsers send a handful of tags in well under 200 characters. WebOb's
    parser takes time that grows with the square of the header's length (a
    200 KB header held a process for seconds), so only a browser's worth
    is ever negotiated; a cut-off last tag is just another tag.
    """
    return ",".join(header[:MAX_ACCEPT_LANGUAGE].split(",", MAX_LANGUAGE_TAGS)[:MAX_LANGUAGE_TAGS])


def _tag(language: str) -> str:
    if not isinstance(language, str) or not language.strip():
        raise ConfigurationError(f"a language is a tag such as 'de' or 'pt-BR', got {language!r}")
    return language.strip().replace("_", "-")


def _catalog(tag: str, directories: list[Path]) -> gettext.NullTranslations:
    """The chain of catalogs for ``tag``, the site's first; gettext's own
    search tries ``de_AT`` then ``de``."""
    found: list[gettext.NullTranslations] = []
    for directory in directories:
        try:
            found.append(gettext.translation(
                DOMAIN, localedir=str(directory), languages=[tag.replace("-", "_")]))
        except FileNotFoundError:
            continue
    if not found:
        return gettext.NullTranslations()
    first, *rest = found
    for catalog in rest:
        first.add_fallback(catalog)
    return first
