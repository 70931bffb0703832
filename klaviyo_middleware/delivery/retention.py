"""How long this project keeps personal data it could not deliver.

Submissions hold names, addresses and phone numbers. Delivered ones are
deleted at once; a dead letter (refused by Klaviyo, or failing for longer
than ``retry_max_age``) is kept so that an operator can read why and retry
it — but not forever. Both the spool and the Celery fleet's Redis state
expire them after ``dead_letter_max_age`` (docs/security.md, "Data we keep").
"""

from __future__ import annotations

from klaviyo_middleware import option
from klaviyo_middleware.option import Option

# Long enough to notice, fix and retry after a holiday; short enough that a
# refused sign-up does not linger for months.
DEFAULT_DEAD_LETTER_MAX_AGE = 30 * 24 * 3600.0

DEAD_LETTER_MAX_AGE: Option[float] = Option(
    "dead_letter_max_age", DEFAULT_DEAD_LETTER_MAX_AGE, option.seconds, option.as_float,
    help="seconds a dead letter (with the person's data) is kept before it is purged; "
         "30 days by default.")
