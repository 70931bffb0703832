"""Django integration: add ``"klaviyo_middleware.django"`` to ``INSTALLED_APPS``
for the ``{% load klaviyo_connect %}`` template tags (docs/migrating-from-craft.md)."""
