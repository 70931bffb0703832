"""Test Klaviyo integrations without the network.

    from klaviyo_middleware.testing import FakeKlaviyo, serve_fake_klaviyo

    with serve_fake_klaviyo(lists={"Y6nRLr": "double_opt_in"}) as fake:
        app = KlaviyoMiddleware(site, api_key="pk_test", api_url=fake.url)
        ...
        assert fake.state.snapshot()["profiles"]

With pytest the ``fake_klaviyo`` fixture does this for you.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from klaviyo_middleware.testing.app import FakeKlaviyo
from klaviyo_middleware.testing.faults import Faults
from klaviyo_middleware.testing.server import BackgroundServer
from klaviyo_middleware.testing.state import KlaviyoState

__all__ = ["FakeKlaviyo", "Faults", "KlaviyoState", "RunningFakeKlaviyo", "serve_fake_klaviyo"]


class RunningFakeKlaviyo:
    """A :class:`FakeKlaviyo` served over HTTP on 127.0.0.1; ``url`` is its base URL."""

    def __init__(self, fake: FakeKlaviyo, server: BackgroundServer) -> None:
        self.fake = fake
        self.server = server
        self.url = server.url

    @property
    def state(self) -> KlaviyoState:
        return self.fake.state

    @property
    def faults(self) -> Faults:
        return self.fake.faults

    def snapshot(self) -> dict[str, Any]:
        return self.fake.state.snapshot()


@contextmanager
def serve_fake_klaviyo(**options: Any) -> Iterator[RunningFakeKlaviyo]:
    """Run a :class:`FakeKlaviyo` (``options`` as its keywords) on a free local port."""
    fake = FakeKlaviyo(**options)
    with BackgroundServer(fake) as server:
        yield RunningFakeKlaviyo(fake, server)
