"""The app gunicorn serves in benchmarks/multiprocess.py: ``served:app``.

$BENCH_VARIANT is ``bare`` (the site alone) or ``spool-full`` /
``spool-normal`` (the site wrapped in the middleware, spool at $BENCH_SPOOL,
Klaviyo stand-in at $BENCH_KLAVIYO).
"""

from __future__ import annotations

import os
from typing import Any

from _support import API_KEY, site


def _build() -> Any:
    variant = os.environ.get("BENCH_VARIANT", "bare")
    if variant == "bare":
        return site
    from klaviyo_middleware import KlaviyoMiddleware

    return KlaviyoMiddleware(site, api_key=API_KEY, api_url=os.environ["BENCH_KLAVIYO"],
                             spool_path=os.environ["BENCH_SPOOL"],
                             spool_durability=variant.removeprefix("spool-"))


app = _build()
