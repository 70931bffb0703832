"""The package's metadata is declarative (setup.cfg); this file only turns the
README into the package index's description: its relative links (docs/,
CHANGELOG.md) name the file in the source distribution instead, since an index page has
no docs/ beside it."""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import setup

README = Path(__file__).resolve().parent / "README.md"
_RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\(((?!https?:|mailto:|#)[^)\s]+)\)")


def long_description() -> str:
    text = README.read_text(encoding="utf-8")
    return _RELATIVE_LINK.sub(
        lambda match: (match.group(1) if match.group(1) == match.group(2)
                       else f"{match.group(1)} (`{match.group(2)}`)")
        + " in the source distribution", text)


setup(long_description=long_description(), long_description_content_type="text/markdown")
