"""The inner application the sample PasteDeploy configs load."""

from __future__ import annotations

from typing import Any


def make_app(global_conf: dict[str, str], greeting: str = "hello") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [greeting.encode(), b" ", environ["PATH_INFO"].encode("latin-1")]

    return app
