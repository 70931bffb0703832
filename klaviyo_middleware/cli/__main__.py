"""``python -m klaviyo_middleware.cli``."""
from __future__ import annotations

from klaviyo_middleware.cli import main

# Guarded: a tool that imports every module (the docs' inspection) must not
# run the command line.
if __name__ == "__main__":
    raise SystemExit(main())
