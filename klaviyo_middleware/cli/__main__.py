"""``python -m klaviyo_middleware.cli``."""
from __future__ import annotations

from klaviyo_middleware.cli import main

raise SystemExit(main())
