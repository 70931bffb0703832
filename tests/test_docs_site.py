"""The documentation site: it builds strictly, works offline, and its
navigation is grouped."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed (the test extra brings it)")
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    return out


def test_nothing_is_loaded_from_another_host(site):
    external = set()
    for page in site.rglob("*.html"):
        external.update(re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"',
                                   page.read_text(encoding="utf-8")))
    assert external == set()


def test_the_api_reference_comes_from_the_docstrings(site):
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("KlaviyoMiddleware", "hidden_inputs", "sign_redirect", "FakeKlaviyo",
                 "CancelSubmission"):
        assert 'id="klaviyo_middleware.' in api and name in api, name


def test_the_navigation_is_grouped():
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert [next(iter(item)) for item in nav] == [
        "Start", "Frameworks", "Forms", "Operations", "Reference"]
