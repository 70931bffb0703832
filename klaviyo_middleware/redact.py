"""Keeping personal data and secrets out of logs and operator output.

Klaviyo's error details can echo the submitted email address or phone
number back, and exception texts can carry anything; whatever is shown to an
operator or written to a log goes through :func:`redact` first unless the
operator asked to see personal data.
"""

from __future__ import annotations

import logging
import re

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# Not next to a letter or digit: ids like "3f2a9c19527b98" are not phone numbers.
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d ()./-]{6,}\d(?!\w)")
_KEY = re.compile(r"\bpk_[A-Za-z0-9_]+")


_show_personal_data = False


def set_personal_data_logging(show: bool) -> None:
    """Let log messages show emails and phone numbers (never API keys)."""
    global _show_personal_data
    _show_personal_data = show


def redact(text: str, personal: bool = True) -> str:
    """``sarah@example.com`` → ``s***@example.com``; phones and keys masked."""
    text = _KEY.sub("pk_***", text)
    if not personal:
        return text
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(lambda match: match.group(0)[:3] + "***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, personal=not _show_personal_data)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with redaction attached.

    Filters are not inherited by child loggers, so every module of the
    package takes its logger from here.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(item, RedactingFilter) for item in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
