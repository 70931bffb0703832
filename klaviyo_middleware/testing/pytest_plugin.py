"""The ``fake_klaviyo`` pytest fixture, registered through the ``pytest11`` entry point.

    def test_signup(fake_klaviyo):
        app = TestApp(KlaviyoMiddleware(site, api_key="pk_test", api_url=fake_klaviyo.url,
                                        delivery="sync"))
        app.post("/klaviyoConnect/api/identify", {"email": "a@example.com"})
        assert fake_klaviyo.snapshot()["profiles"][0]["email"] == "a@example.com"
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from klaviyo_middleware.testing import RunningFakeKlaviyo, serve_fake_klaviyo


@pytest.fixture
def fake_klaviyo() -> Iterator[RunningFakeKlaviyo]:
    """A fake Klaviyo on a free 127.0.0.1 port, fresh for each test."""
    with serve_fake_klaviyo() as running:
        yield running
