"""One configuration option, declared once (docs/configuration.md).

An :class:`Option` says everything about a setting in one place: its name
(the keyword argument, the PasteDeploy key, and ``klaviyo_<name>`` in a
Celery app's config), its default, its environment variable if it has one,
the check that turns what a user wrote into what the code uses, how to read
it from text (ini files and environment variables only hold strings), and
the line that documents it. The middleware's signature and docstring, the
PasteDeploy factory and the Celery workers all read these declarations, and
``tests/test_options.py`` holds the typed signature to them.

The generic checks and text readers live here too; a check that knows a
domain (an API key, a phone region) lives with that domain.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from klaviyo_middleware.errors import ConfigurationError

T = TypeVar("T")

Check = Callable[[str, Any], Any]
FromText = Callable[[str, str], Any]


def as_text(name: str, value: str) -> str:
    return value


def as_bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "on", "y", "t", "1"):
        return True
    if lowered in ("false", "no", "off", "n", "f", "0"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def as_int(name: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {value!r}") from None


def as_float(name: str, value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None


def as_list(name: str, value: str) -> tuple[str, ...]:
    return split_list(value)


def split_list(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a b, c"`` or ``["a", "b"]`` → ``("a", "b", "c")``."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part for part in re.split(r"[\s,]+", value) if part)
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(f"expected host names, not {item!r}")
    return tuple(item.strip() for item in items if item.strip())


@dataclass(frozen=True)
class Option(Generic[T]):
    """A setting: where it is read from, its default and its check.

    :param default: used when neither the caller nor the environment gives a
        value. For an option with ``env`` the keyword's own default is
        ``None`` (so the environment can still be read); see
        :attr:`keyword_default`.
    :param check: ``check(name, value)`` returns the value the code uses or
        raises :class:`~klaviyo_middleware.errors.ConfigurationError`.
    :param from_text: ``from_text(name, text)`` for ini files and the
        environment; the check runs after it.
    :param help: one sentence (or a few) for the documentation.
    :param craft: the value ``craft_compat=True`` gives the option when
        neither the caller nor the environment set it (the Craft plugin's
        behaviour where our default is deliberately safer).
    """

    name: str
    default: T
    check: Check
    from_text: FromText = as_text
    env: str | None = None
    help: str = ""
    craft: T | None = None

    @property
    def keyword_default(self) -> T | None:
        """The keyword argument's default: ``None`` when ``env`` or
        ``craft_compat`` may fill it."""
        return None if self.env or self.craft is not None else self.default

    def lookup(self, given: object, environ: Mapping[str, str],
               craft_compat: bool = False) -> Any:
        """What was asked for, unchecked: ``given``, else ``$env``, else the
        default (the Craft one under ``craft_compat``). ``None`` and ``""``
        count as not given."""
        if _given(given):
            return given
        if self.env:
            text = environ.get(self.env, "")
            if text.strip():
                return self.from_text(self.env, text)
        if craft_compat and self.craft is not None:
            return self.craft
        return self.default

    def resolve(self, given: object, environ: Mapping[str, str],
                craft_compat: bool = False) -> Any:
        return self.check(self.name, self.lookup(given, environ, craft_compat))

    def read(self, given: object, environ: Mapping[str, str]) -> Any:
        """Like :meth:`resolve`, where ``given`` may be text (a Celery app's
        config, read from wherever its owner keeps it)."""
        if isinstance(given, str) and given.strip():
            given = self.from_text(self.name, given)
        return self.resolve(given, environ)

    def doc(self) -> str:
        """The ``:param:`` line of a docstring."""
        text = self.help
        if self.craft is not None:
            text += f" ``{self.craft!r}`` with ``craft_compat``."
        if self.env:
            text += f" Default ``${self.env}``"
            text += f" or ``{self.default!r}``." if self.default is not None else "."
        return f":param {self.name}: {text}"


def _given(value: object) -> bool:
    return value is not None and value != ""


# -- generic checks ------------------------------------------------------------


def choice(*choices: str) -> Check:
    def check(name: str, value: object) -> str:
        if value not in choices:
            raise ConfigurationError(
                f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return str(value)
    return check


def boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(f"{name} must be a whole number above 0, got {value!r}")
    return value


def count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigurationError(f"{name} must be a whole number ≥ 0, got {value!r}")
    return value


def seconds(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1e12:
        raise ConfigurationError(f"{name} must be a number of seconds ≥ 0, got {value!r}")
    return float(value)


def share(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise ConfigurationError(f"{name} must be a fraction above 0 and at most 1, got {value!r}")
    return float(value)


def optional_text(name: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be text, got {value!r}")
    return value
