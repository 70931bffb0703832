"""Keeping personal data and secrets out of logs and operator output.

Klaviyo's error details can echo the submitted email address or phone
number back, and exception texts can carry anything; whatever is shown to an
operator or written to a log goes through :func:`redact` first unless the
operator asked to see personal data.
"""

from __future__ import annotations

import logging
import re

# Unicode on both sides: "josé@example.com" and "用户@例子.公司" are addresses
# too. The local part stops at what quotes or separates text in messages.
_ADDRESS_CHAR = r"[^\s@<>()\[\]{},;:\"'`*]"
_EMAIL = re.compile(
    rf"({_ADDRESS_CHAR}){_ADDRESS_CHAR}*@((?:[\w-]+\.)+[\w-]{{2,}})"
)
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


_TRACEBACKS = logging.Formatter()


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message and traceback.

    An exception's text can hold anything (``KeyError: 'sarah@example.com'``
    from a hook), so a record's traceback is formatted here and redacted
    into ``exc_text``, and the exception object itself is dropped: a
    handler that formatted it again would undo the redaction.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        personal = not _show_personal_data
        message = record.getMessage()
        cleaned = redact(message, personal=personal)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(_TRACEBACKS.formatException(record.exc_info), personal)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, personal)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, personal)
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
