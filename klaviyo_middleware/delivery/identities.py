"""How delivery names an account and a sender, whatever the backend.

An *account* is a fingerprint of the API URL and key: rows and Redis keys
carry it, so that two sites sharing a spool file or a Redis database by
mistake never deliver each other's submissions with the wrong key. An
*owner* names one sender (a spool process, a Celery drain) in the leases it
holds; the host and PID in it let the spool see a dead owner at once.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid


def account_fingerprint(api_url: str, api_key: str) -> str:
    return hashlib.sha256(f"{api_url}\n{api_key}".encode()).hexdigest()[:16]


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
