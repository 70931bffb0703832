"""A mkdocs hook: the package's docstrings are written for ``help()`` and
Sphinx (``:class:`Spool```, a literal block after ``::``); on the site the
roles read as plain code and the ``::`` as a colon."""

from __future__ import annotations

import re
from typing import Any

# ":class:<code>~pkg.Name</code>" as the docstring renderer leaves it.
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):"
                   r"<code>~?([^<]*)</code>")
_LITERAL_BLOCK = re.compile(r"::(</p>)")


def on_page_content(html: str, **_: Any) -> str:
    html = _ROLE.sub(lambda match: f"<code>{match.group(1)}</code>", html)
    return _LITERAL_BLOCK.sub(r":\1", html)
