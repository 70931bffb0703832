"""Every shell command the README and docs/ show, run as printed.

Each ``sh`` block carries a marker on the line before it:

- ``<!-- commands: run -->``: run with bash; it must exit 0;
- ``<!-- commands: serve URL -->``: started; URL must answer, then it is stopped;
- ``<!-- commands: skip (reason) -->``: a reference or a production command.

They run in a fresh virtualenv with the package installed from its wheel
(built from this checkout), in a copy of the source tree, on each Python
this machine has of 3.10 and 3.13 (the ends of the supported range), with
``KLAVIYO_PRIVATE_API_KEY`` set and ``KLAVIYO_API_URL`` pointing at a fake
Klaviyo, so that nothing leaves the machine. ``pip install
klaviyo_middleware...`` resolves to the wheel just built.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from klaviyo_middleware.testing import RunningFakeKlaviyo, serve_fake_klaviyo

from support.services import free_port
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!-- commands: (run|serve (\S+)|skip \(([^)]+)\)) -->\s*$")
PYTHONS = ("3.10", "3.13")
# What the venv needs beyond the package for the blocks that run: the
# servers of the PasteDeploy example (pyramid extra: pserve, gunicorn).
EXTRAS = "pyramid,paste"
BASH = shutil.which("bash") or "/bin/bash"
GIT = shutil.which("git") or "/usr/bin/git"


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    how: str        # run, serve or skip
    url: str | None
    text: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def shell_blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in SHELL_BLOCK.finditer(text):
            before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.match(before)
            line = text.count("\n", 0, match.start()) + 1
            how = marker.group(1).split()[0] if marker else "unmarked"
            found.append(Block(str(page.relative_to(ROOT)), line, how,
                               marker.group(2) if marker else None, match.group(1)))
    return found


def test_every_shell_block_says_whether_it_runs():
    unmarked = [str(block) for block in shell_blocks() if block.how == "unmarked"]
    assert unmarked == [], "mark each with <!-- commands: run|serve URL|skip (why) -->"
    assert sum(block.how != "skip" for block in shell_blocks()) >= 8


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` that runs: on PATH, or one pyenv installed
    (its shims answer only for the versions a project selected)."""
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += sorted(str(path) for path in
                         (Path.home() / ".pyenv" / "versions").glob(f"{version}.*/bin/python3"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import venv"], capture_output=True)
        if probe.returncode == 0:
            return candidate
    return None


def interpreters() -> list[str]:
    found = [python for python in map(find_python, PYTHONS) if python]
    if not found and os.environ.get("CI"):
        raise RuntimeError(f"CI needs Python {' or '.join(PYTHONS)} for the docs' commands")
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    [built] = out.glob("klaviyo_middleware-*.whl")
    return built


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """The checkout as a user has it: what `git ls-files` lists."""
    tree = tmp_path_factory.mktemp("source") / "klaviyo_middleware"
    listed = subprocess.run([GIT, "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    return tree


def python_id(python: str | None) -> str:
    return "python" + ".".join(Path(python).parts[-3].split(".")[:2]) if python else "none"


@pytest.fixture(scope="module", ids=python_id, params=interpreters() or [pytest.param(
    None, marks=pytest.mark.skip(reason=f"no Python {' or '.join(PYTHONS)} here"))])
def venv(request, wheel, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([request.param, "-m", "venv", str(home)], check=True, timeout=120)
    subprocess.run([str(home / "bin" / "pip"), "install", "--quiet",
                    f"{wheel}[{EXTRAS}]"], check=True, timeout=900)
    return home


@pytest.fixture(scope="module")
def fake() -> Iterator[RunningFakeKlaviyo]:
    with serve_fake_klaviyo() as running:
        yield running


def environment(venv: Path, wheel: Path, fake: RunningFakeKlaviyo, scratch: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("VIRTUAL_ENV", "PYTHON", "KLAVIYO_", "PIP_"))}
    env.update(
        PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", VIRTUAL_ENV=str(venv),
        KLAVIYO_PRIVATE_API_KEY="pk_docs_commands_0000000000000000",
        KLAVIYO_API_URL=fake.url, KLAVIYO_SPOOL_PATH=str(scratch / "spool.sqlite3"),
        # `pip install klaviyo_middleware[...]` finds the wheel just built.
        PIP_FIND_LINKS=str(wheel.parent), PIP_DISABLE_PIP_VERSION_CHECK="1",
        HOME=str(scratch))
    return env


RUNNABLE = [block for block in shell_blocks() if block.how in ("run", "serve")]


@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_the_command_works_as_printed(block, venv, wheel, fake, source_tree, tmp_path):
    env = environment(venv, wheel, fake, tmp_path)
    if block.how == "run":
        finished = subprocess.run([BASH, "-euo", "pipefail", "-c", block.text],
                                  cwd=source_tree, env=env, capture_output=True, text=True,
                                  timeout=900)
        assert finished.returncode == 0, f"{block}:\n{finished.stdout}\n{finished.stderr}"
        return
    log = tmp_path / "server.log"
    with open(log, "wb") as output:
        server = subprocess.Popen([BASH, "-c", block.text], cwd=source_tree, env=env,
                                  stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def answers() -> bool:
        assert server.poll() is None, f"{block} exited:\n{log.read_text()}"
        try:
            return requests.get(block.url, timeout=2).status_code < 500
        except requests.RequestException:  # not up yet: refused, or slow to answer
            return False

    try:
        wait_for(answers, timeout=90)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    assert "Traceback" not in log.read_text(), log.read_text()


def test_make_demo_serves_from_a_fresh_checkout(source_tree, tmp_path):
    """The README's first command, as printed, on a checkout with no virtualenv."""
    make = shutil.which("make") or "/usr/bin/make"
    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("VIRTUAL_ENV", "KLAVIYO_", "PIP_"))}
    env["HOME"] = str(tmp_path)
    log = tmp_path / "demo.log"
    with open(log, "wb") as output:
        demo = subprocess.Popen([make, "demo", f"PORT={port}", f"VENV={tmp_path / 'venv'}"],
                                cwd=source_tree, env=env, stdout=output,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def answers() -> bool:
        assert demo.poll() is None, log.read_text()
        try:
            return "klaviyo_middleware demo" in requests.get(
                f"http://127.0.0.1:{port}/", timeout=2).text
        except requests.RequestException:  # not up yet: refused, or slow to answer
            return False

    try:
        wait_for(answers, timeout=300)
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(timeout=30)
    installed = subprocess.run([str(tmp_path / "venv" / "bin" / "pip"), "list",
                                "--format=freeze"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
    # The package and its own dependencies: no test toolchain.
    assert not any(line.lower().startswith(("pytest", "mypy", "ruff", "celery", "playwright"))
                   for line in installed)
