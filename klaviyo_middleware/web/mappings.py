"""Profile mappings (docs/forms.md, "Mappings and hooks"): who a submission is about.

A mapping is a function ``(request) -> dict`` that returns profile fields in
the form vocabulary of docs/forms.md (``email``, ``first_name``, ``city``,
``extra`` …). Its result is validated like form input, so a custom mapping
cannot send Klaviyo anything a form could not. The parsed body is available
to it as ``request.environ["klaviyo.form"]``.

A form picks one with the hidden field ``klaviyoProfileMapping``. Mappings
are found, latest first, in: the middleware's ``mappings=`` argument and its
``@middleware.mapping(name)`` decorator, the module-level
:func:`register_mapping` decorator, the entry-point group
``klaviyo_middleware.web.mappings``, and the built-ins ``formdata`` and ``user``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from webob import Request

from klaviyo_middleware.i18n.message import msg
from klaviyo_middleware.web.fields import blank

ProfileMapping = Callable[[Request], Mapping[str, Any]]
UserLoader = Callable[[dict[str, Any]], Any]

ENTRY_POINT_GROUP = "klaviyo_middleware.mappings"
DEFAULT_MAPPING = "formdata"
FORM_ENVIRON_KEY = "klaviyo.form"

# Top-level form fields that describe the person (docs/forms.md).
PROFILE_FIELDS = (
    "email",
    "id",
    "first_name",
    "last_name",
    "title",
    "organization",
    "image",
    "phone_number",
    "address1",
    "address2",
    "city",
    "region",
    "country",
    "zip",
    "timezone",
    "extra",
)

_registered: dict[str, ProfileMapping] = {}


class MappingError(Exception):
    """A mapping could not produce a profile; shown to the visitor as a field error."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def register_mapping(name: str) -> Callable[[ProfileMapping], ProfileMapping]:
    """Decorator registering a mapping for every middleware in the process."""

    def decorate(func: ProfileMapping) -> ProfileMapping:
        _registered[name] = func
        return func

    return decorate


def form_of(request: Request) -> dict[str, Any]:
    form = request.environ.get(FORM_ENVIRON_KEY)
    return form if isinstance(form, dict) else {}


# Today's plugin nests the person under ``profile[...]``: Klaviyo's own
# attribute names, ``location`` and ``properties`` as groups.
_NESTED_ALIASES = {"external_id": "id", "properties": "extra"}
LOCATION_FIELDS = ("address1", "address2", "city", "region", "country", "zip", "timezone")


def formdata_mapping(request: Request) -> dict[str, Any]:
    """The default: profile fields from the form, ``profile[...]`` taking precedence.

    Both eras of the plugin's forms read the same: ``city`` or
    ``profile[location][city]``, ``extra[Colour]`` or
    ``profile[properties][Colour]`` (merged, the nested one winning per
    key), ``email`` or ``profile[email]``. Any other key directly under
    ``profile[...]`` (``profile[LastLogin]``, documented by the plugin since
    2019) is a custom property, as today's plugin sends it; a key under
    ``profile[properties]`` wins over one of the same name.
    """
    form = form_of(request)
    profile = {key: form[key] for key in PROFILE_FIELDS if key in form}
    nested = form.get("profile")
    if nested is None or nested == "":
        return profile
    if not isinstance(nested, dict):
        raise MappingError("profile", msg("Send profile fields as profile[NAME]=value."))
    custom: dict[str, Any] = {}
    for key, value in nested.items():
        name = _NESTED_ALIASES.get(key, key)
        if name == "location":
            _merge_location(profile, value)
        elif name == "extra":
            _merge_properties(profile, value)
        elif name in PROFILE_FIELDS:
            # Flat location keys (profile[city]) work too, as at the top.
            if not blank(value):
                profile[name] = value
        elif not blank(value):
            custom[key] = value
    if custom:
        # Under the explicit profile[properties], which wins a clash.
        _merge_properties(profile, {**custom, **_properties_of(profile)})
    return profile


def _properties_of(profile: dict[str, Any]) -> dict[str, Any]:
    extra = profile.get("extra")
    return extra if isinstance(extra, dict) else {}


def _merge_location(profile: dict[str, Any], location: Any) -> None:
    if not isinstance(location, dict):
        raise MappingError("profile[location]", msg(
            "Send the location as profile[location][city]=value and so on."))
    for key, value in location.items():
        if key not in LOCATION_FIELDS:
            raise MappingError(f"profile[location][{key}]", msg("Unknown location field."))
        if not blank(value):
            profile[key] = value


def _merge_properties(profile: dict[str, Any], properties: Any) -> None:
    if not isinstance(properties, dict):
        raise MappingError("profile[properties]", msg(
            "Send custom properties as profile[properties][NAME]=value."))
    extra = profile.get("extra")
    if extra is not None and not isinstance(extra, dict):
        return  # validation reports the malformed extra
    merged = dict(extra or {})
    merged.update(properties)
    profile["extra"] = merged


def make_user_mapping(user_loader: UserLoader | None) -> ProfileMapping:
    """The ``user`` mapping: the signed-in person, never whoever the form names.

    ``user_loader(environ)`` returns the user (an object or a mapping with
    ``email``, ``first_name``, ``last_name``, ``id``) or ``None``; without a
    loader, or when it finds nobody, ``REMOTE_USER`` is used. Other profile
    fields still come from the form.
    """

    def user_mapping(request: Request) -> dict[str, Any]:
        profile = formdata_mapping(request)
        user = user_loader(request.environ) if user_loader is not None else None
        if user is not None:
            identity = _user_fields(user)
        else:
            identity = _remote_user_fields(request.environ.get("REMOTE_USER"))
        if not identity.get("email"):
            raise MappingError("email", msg("Sign in to continue."))
        profile.update(identity)
        return profile

    return user_mapping


def _user_fields(user: Any) -> dict[str, Any]:
    fields = {
        "email": _read(user, "email"),
        "first_name": _read(user, "first_name", "firstName"),
        "last_name": _read(user, "last_name", "lastName"),
        "id": _read(user, "id", "pk"),
    }
    return {key: str(value) for key, value in fields.items() if value not in (None, "")}


def _read(user: Any, *names: str) -> Any:
    for name in names:
        value = user.get(name) if isinstance(user, Mapping) else getattr(user, name, None)
        if value not in (None, ""):
            return value
    return None


def _remote_user_fields(remote_user: object) -> dict[str, Any]:
    if not isinstance(remote_user, str) or not remote_user:
        return {}
    fields = {"id": remote_user}
    if "@" in remote_user:
        fields["email"] = remote_user
    return fields


class MappingRegistry:
    """Mapping names resolved for one middleware."""

    def __init__(
        self,
        user_loader: UserLoader | None = None,
        mappings: Mapping[str, ProfileMapping] | None = None,
    ) -> None:
        user_mapping = make_user_mapping(user_loader)
        self._builtins: dict[str, ProfileMapping] = {
            "formdata": formdata_mapping,
            "formdata_mapping": formdata_mapping,
            "user": user_mapping,
            "usermodel_mapping": user_mapping,
        }
        # Entry points are read once, at start-up, so a broken plugin fails
        # loudly then rather than on some visitor's request.
        self._plugins = _load_entry_points()
        self._own: dict[str, ProfileMapping] = dict(mappings or {})
        for name, func in self._own.items():
            if not callable(func):
                raise TypeError(f"mapping {name!r} is not callable")

    def register(self, name: str) -> Callable[[ProfileMapping], ProfileMapping]:
        def decorate(func: ProfileMapping) -> ProfileMapping:
            self._own[name] = func
            return func

        return decorate

    def get(self, name: str) -> ProfileMapping | None:
        for source in (self._own, _registered, self._plugins, self._builtins):
            if name in source:
                return source[name]
        return None


def _load_entry_points() -> dict[str, ProfileMapping]:
    found: dict[str, ProfileMapping] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found[point.name] = point.load()
    return found
