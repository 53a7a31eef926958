"""Set-up files agree: pip users (pyproject.toml) and conda users (environment.yml) get the same pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    name, _, rest = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement).group(1, 0, 2)
    return re.sub(r"[-_.]+", "-", name).lower() + rest.replace(" ", "")


def test_environment_yml_and_pyproject_pin_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_users = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"] and "pytorch" not in env["channels"]
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_users = {_normalise(r) for r in pip_block if not r.startswith("-e")}
    assert pip_users == conda_users, f"only in pyproject: {pip_users - conda_users}; only in environment.yml: {conda_users - pip_users}"
    assert "-e ." in pip_block


def test_torch_and_torchvision_are_pinned():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
