"""Pairing: the lab of `make lab-collab` has real-time collaboration on (asked through its REST API), `make lab` off;
the editor and container files point at the course environment."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from vitlib.serve import free_port

ROOT = Path(__file__).resolve().parents[1]
httpx = pytest.importorskip("httpx")


def _jsonc(path: Path) -> dict:
    """VS Code's JSON with comments: drop the // comment lines, then parse."""
    text = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if not line.strip().startswith("//"))
    return json.loads(text)


def _lab_command(target: str) -> list[str]:
    """The `jupyter lab ...` line that `make TARGET` runs (make -n prints it without running it)."""
    shown = subprocess.run(["make", "-n", "-s", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = [line for line in shown.splitlines() if re.search(r"jupyter lab\b", line)]
    assert len(lines) == 1, shown
    return shlex.split(lines[0])


class _Lab:
    """The lab of a make target, started on 127.0.0.1 in a temporary folder with a known token."""

    def __init__(self, target: str, folder: Path) -> None:
        command = [str(ROOT / part) if part.startswith(".venv/") else part for part in _lab_command(target)]
        command = [f"--notebook-dir={folder}" if part.startswith("--notebook-dir=") else part for part in command]
        assert "--ServerApp.ip=127.0.0.1" in command, "the lab must listen on 127.0.0.1 only"
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "lab.log"
        # its own Jupyter folders: neither the user's settings nor this test's state leak either way
        env = {**os.environ, **{f"JUPYTER_{kind}_DIR": str(folder / f".jupyter-{kind.lower()}") for kind in ("CONFIG", "DATA", "RUNTIME")}}
        root = []  # `make` adds --allow-root itself when it runs as root (test_make_lab_allows_root_only_as_root)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [*command, "--no-browser", f"--ServerApp.port={self.port}", f"--IdentityProvider.token={self.token}",
                 "--ServerApp.port_retries=0", *root], cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if self.get("/api/status").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "JupyterLab did not answer within 90 s:\n" + self.log.read_text()[-3000:]
            time.sleep(0.3)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"token {self.token}"}, timeout=10)

    def put(self, path: str, body: dict) -> httpx.Response:
        return httpx.put(f"{self.url}{path}", json=body, headers={"Authorization": f"token {self.token}"}, timeout=10)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _page_config(lab: _Lab) -> dict:
    page = lab.get("/lab").text
    found = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S)
    assert found, page[:500]
    return json.loads(found.group(1))


@pytest.fixture
def lab_folder(tmp_path):
    shutil.copy(ROOT / "weeks" / "00_setup.ipynb", tmp_path / "00_setup.ipynb")
    return tmp_path


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "jupyter").exists(), reason="no .venv: run `make setup`")
def test_make_lab_collab_starts_a_lab_with_collaboration_on(lab_folder):
    lab = _Lab("lab-collab", lab_folder)
    try:
        # the extension manager lists the package, installed and enabled ...
        extensions = {e["name"]: e for e in lab.get("/lab/api/extensions").json()}
        collaboration = extensions.get("jupyter-collaboration-extension")
        assert collaboration and collaboration["installed"] and collaboration["enabled"], sorted(extensions)
        # ... the page loads its front-end parts, with collaboration not disabled ...
        config = _page_config(lab)
        loaded = {e["name"] for e in config["federated_extensions"]}
        assert {"@jupyter/collaboration-extension", "@jupyter/docprovider-extension"} <= loaded, loaded
        assert config.get("disableRTC") is False
        # the collaboration server extension answers: a shared session of a notebook, by its path
        session = lab.put("/api/collaboration/session/00_setup.ipynb", {"format": "json", "type": "notebook"})
        assert session.status_code in (200, 201), session.text
        assert session.json()["sessionId"]
    finally:
        lab.stop()
    assert not (ROOT / "weeks" / ".jupyter_ystore.db").exists()


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "jupyter").exists(), reason="no .venv: run `make setup`")
def test_make_lab_is_the_same_lab_with_collaboration_off(lab_folder):
    lab = _Lab("lab", lab_folder)
    try:
        assert _page_config(lab).get("disableRTC") is True
    finally:
        lab.stop()


def test_vscode_recommends_the_pairing_extensions_and_uses_the_course_environment():
    recommended = _jsonc(ROOT / ".vscode" / "extensions.json")["recommendations"]
    assert set(recommended) == {"ms-python.python", "ms-toolsai.jupyter", "ms-vsliveshare.vsliveshare"}
    settings = _jsonc(ROOT / ".vscode" / "settings.json")
    assert settings["python.defaultInterpreterPath"] == "${workspaceFolder}/.venv/bin/python"


def test_the_devcontainer_builds_the_same_environment_with_an_optional_gpu():
    container = _jsonc(ROOT / ".devcontainer" / "devcontainer.json")
    assert "make setup" in container["postCreateCommand"]
    assert container["hostRequirements"]["gpu"] == "optional"
    assert set(container["customizations"]["vscode"]["extensions"]) == set(_jsonc(ROOT / ".vscode" / "extensions.json")["recommendations"])
    assert "3.11" in container["image"]  # the Python of the pinned torch wheels


def test_collaboration_files_stay_out_of_git():
    ignored = subprocess.run(["git", "check-ignore", ".jupyter_ystore.db", "weeks/.jupyter/collaboration_sessions.json"],
                             cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == [".jupyter_ystore.db", "weeks/.jupyter/collaboration_sessions.json"]


def test_make_lab_allows_root_only_as_root():
    """As root (a container), JupyterLab needs --allow-root: `make lab` adds it then, says so, and only then."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    for target in ("lab", "lab-collab"):
        assert ("--allow-root" in _lab_command(target)) == as_root
        shown = subprocess.run(["make", "-n", "-s", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert ("running as root" in shown) == as_root
