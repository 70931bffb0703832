"""Which delivery backend a site gets, from its settings."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from klaviyo_middleware.delivery.hooks import Hooks
from klaviyo_middleware.delivery.identities import account_fingerprint
from klaviyo_middleware.delivery.protocol import Delivery
from klaviyo_middleware.delivery.spool.backend import SpoolDelivery
from klaviyo_middleware.delivery.spool.store import Spool
from klaviyo_middleware.delivery.sync import SyncDelivery
from klaviyo_middleware.errors import ConfigurationError
from klaviyo_middleware.klaviyo.client import KlaviyoClient
from klaviyo_middleware.klaviyo.retry import RetryPolicy

if TYPE_CHECKING:
    # Only the type: settings sit above delivery and are passed down.
    from klaviyo_middleware.settings import Settings


def build_delivery(settings: Settings, hooks: Hooks, celery_app: Any = None) -> Delivery:
    if settings.delivery == "celery":
        return _celery_delivery(settings, celery_app)
    client = KlaviyoClient(
        settings.api_key,
        api_url=settings.api_url,
        revision=settings.revision,
        timeout=settings.timeout,
    )
    if settings.delivery == "sync":
        return SyncDelivery(client, hooks, RetryPolicy(budget=settings.sync_retry_budget))
    try:
        spool = Spool(
            settings.spool_path,
            account_fingerprint(settings.api_url, settings.api_key),
            durability=settings.spool_durability,
            max_bytes=settings.spool_max_size,
            dead_max_bytes=settings.dead_letter_max_size,
        )
        # Starts the sender, whose first write shows a read-only file.
        return SpoolDelivery(spool, client, hooks, settings.sender)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigurationError(
            f"cannot use the spool at {settings.spool_path!r} ({exc}); set spool_path "
            "or KLAVIYO_SPOOL_PATH to a writable file"
        ) from None


def _celery_delivery(settings: Settings, celery_app: Any) -> Delivery:
    try:
        from klaviyo_middleware.delivery.celery.tasks import configure, make_celery
    except ImportError:
        raise ConfigurationError(
            'delivery="celery" needs Celery: pip install "klaviyo_middleware[celery]"'
        ) from None
    from klaviyo_middleware.delivery.celery.backend import CeleryDelivery

    if celery_app is not None:
        configure(celery_app)
        return CeleryDelivery(celery_app)
    if not settings.broker_url:
        raise ConfigurationError(
            'delivery="celery" needs broker_url (or KLAVIYO_BROKER_URL) or celery_app'
        )
    return CeleryDelivery(make_celery(settings.broker_url), owns_app=True)
