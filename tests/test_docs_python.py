"""Every Python block of the README and docs/ works when pasted.

Each block is marked, on the line before it:

- ``<!-- python: run -->``: executed as printed, in a fresh namespace, in a
  scratch directory with a key in the environment (as the docs' set-up has
  it); it must not raise;
- ``<!-- python: given NAME, NAME (what they are) -->``: a fragment that
  uses the reader's own objects (their ``app``, their hook); not executed.

Every block, either kind, is also checked with ruff's pyflakes rules, the
given names counting as defined: a snippet that forgets an import (``os``,
``TestApp``) fails here rather than in a stranger's first hour.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)
MARKER = re.compile(r"<!-- python: (run|given ([^(]*?)\s*(?:\(([^)]*)\))?) -->\s*$")


def blocks() -> list[Any]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            found.append(pytest.param(page, line, before, textwrap.dedent(match.group(2)),
                                      id=f"{page.relative_to(ROOT)}:{line}"))
    return found


BLOCKS = blocks()


def test_every_block_is_marked():
    unmarked = [param.id for param in BLOCKS if not MARKER.match(param.values[2])]
    assert unmarked == [], "mark each with <!-- python: run --> or <!-- python: given NAMES -->"


@pytest.mark.parametrize(("page", "line", "marker", "code"), BLOCKS)
def test_no_name_is_missing(page, line, marker, code, tmp_path):
    match = MARKER.match(marker)
    assert match, marker
    given = [name.strip() for name in (match.group(2) or "").split(",") if name.strip()]
    ruff = shutil.which("ruff", path=os.path.dirname(os.sys.executable)) or "ruff"
    snippet = tmp_path / "snippet.py"
    snippet.write_text(code, encoding="utf-8")
    finished = subprocess.run(
        [ruff, "check", "--no-cache", "--isolated", "--select", "F821,F822,F823",
         "--config", f"builtins = {given!r}", str(snippet)],
        capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, f"{page.name}:{line}\n{finished.stdout}"


@pytest.mark.parametrize(("page", "line", "marker", "code"),
                         [param for param in BLOCKS if param.values[2] == "<!-- python: run -->"])
def test_runs_as_printed(page, line, marker, code, tmp_path, monkeypatch):
    from klaviyo_middleware import KlaviyoMiddleware

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KLAVIYO_PRIVATE_API_KEY", "pk_docs_python_000000000000000000")
    monkeypatch.setenv("KLAVIYO_SPOOL_PATH", str(tmp_path / "spool.sqlite3"))
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}_{line}"}
    try:
        exec(compile(code, f"{page.name}:{line}", "exec"), namespace)  # noqa: S102
        # A factory the page shows is called, as the reader's app would.
        if callable(namespace.get("create_app")):
            namespace["app"] = namespace["create_app"]()
    finally:
        for value in list(namespace.values()):
            wrapped = getattr(value, "wsgi_app", value)
            if isinstance(wrapped, KlaviyoMiddleware):
                wrapped.close()
