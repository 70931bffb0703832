"""The release artefacts a stranger installs: the sdist can run its own tests,
the wheel carries the catalogs, the metadata reads well on a package index."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GIT = shutil.which("git") or "/usr/bin/git"


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir",
                            str(out), str(ROOT)], check=True, capture_output=True, text=True,
                           timeout=600)
    (out / "build.log").write_text(built.stdout + built.stderr)
    return out


def test_the_build_says_nothing_alarming(dist):
    """`make demo` printed some 200 lines of "Package ... is absent" before
    the catalogs' folders were declared: a stranger reads them as failure."""
    log = (dist / "build.log").read_text()
    assert "is absent from the `packages` configuration" not in log
    assert "SetuptoolsDeprecationWarning" not in log


def tracked(folder: str) -> set[str]:
    listed = subprocess.run([GIT, "ls-files", "-z", folder], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    return {name for name in listed if name}


def test_the_sdist_carries_every_test_helper_and_doc(dist):
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    wanted = tracked("tests") | tracked("docs") | tracked("examples") | {
        "LICENSE", "CHANGELOG.md", "README.md", "mkdocs.yml", "Makefile"}
    assert wanted - names == set()
    assert not any(name.endswith((".pyc", ".sqlite3")) for name in names)


def test_the_wheel_carries_the_catalogs_and_types(dist):
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = Parser().parsestr(archive.read(
            next(name for name in names if name.endswith(".dist-info/METADATA"))).decode())
    for language in ("de", "fr", "es", "nl"):
        assert f"klaviyo_middleware/locale/{language}/LC_MESSAGES/klaviyo_middleware.mo" in names
    assert "klaviyo_middleware/py.typed" in names
    assert not any(name.startswith("tests/") for name in names)
    classifiers = metadata.get_all("Classifier")
    assert "Framework :: Django" in classifiers and "Programming Language :: Python :: 3.13" \
        in classifiers
    assert metadata["License-Expression"] == "MIT" or metadata["License"] == "MIT"
    assert any(name.endswith("licenses/LICENSE") or name.endswith("/LICENSE") for name in names)
    description = metadata.get_payload()
    # No link a package index page could not follow.
    assert re.findall(r"\]\((?!https?:|#)[^)]+\)", description) == []
    assert "docs/django.md" in description
