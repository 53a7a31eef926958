"""Git that works for notebooks: the strip filter, `make git-setup` (nbdime, pre-commit), clean committed notebooks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from vitlib.notebooks import is_checked, strip_text

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment the tests run in: .venv/bin under `make test`
NOTEBOOKS = sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "weeks").glob("*.ipynb"))


def _ran(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What a student's run leaves: outputs and counts everywhere, widget state, a new check output."""
    nb = nbformat.from_dict(nb)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        if is_checked(cell):
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="✓ my check passed\n")]
        else:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"debug print {i}\n"),
                            nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=" * 500})]
        cell.metadata["execution"] = {"iopub.status.busy": "2026-11-22T10:00:00"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


# --- the filter -----------------------------------------------------------------------------------


def test_strip_keeps_only_the_check_cells_outputs_and_counts():
    shipped = (ROOT / "weeks" / "01_patching.ipynb").read_text(encoding="utf-8")
    stripped = nbformat.reads(strip_text(nbformat.writes(_ran(nbformat.reads(shipped, as_version=4)))), as_version=4)
    code = [c for c in stripped.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code if not is_checked(c))
    checked = [c for c in code if is_checked(c)]
    assert checked and all(c.outputs[0].text == "✓ my check passed\n" and c.execution_count for c in checked)
    assert "widgets" not in stripped.metadata and all("execution" not in c.metadata for c in code)


def test_strip_leaves_a_shipped_notebook_byte_for_byte_and_never_loses_a_broken_file():
    for path in NOTEBOOKS:
        text = path.read_text(encoding="utf-8")
        assert strip_text(text) == text, f"{path.name} is not what the filter would commit"
    conflicted = '{\n<<<<<<< HEAD\n "cells": []\n=======\n "cells": [1]\n>>>>>>> theirs\n}\n'
    assert strip_text(conflicted) == conflicted
    assert strip_text("") == ""


def test_the_filter_command_is_light_and_round_trips():
    shipped = (ROOT / "weeks" / "02_attention.ipynb").read_bytes()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "vitlib.notebooks", "strip"],
                            input=shipped, capture_output=True, check=True)
    assert result.stdout == shipped
    imported = result.stderr.decode()
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in imported.splitlines()}, \
        "the git filter must not import PyTorch: it runs for every notebook git looks at"


# --- make git-setup in a clone --------------------------------------------------------------------


def _git(repo: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Student", "GIT_AUTHOR_EMAIL": "s@example.org",
           "GIT_COMMITTER_NAME": "Student", "GIT_COMMITTER_EMAIL": "s@example.org",
           "PRE_COMMIT_HOME": str(repo.parent / "pre-commit-cache")}
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env, **kwargs)


@pytest.fixture
def clone(tmp_path):
    """A repository with what `make git-setup` reads: the scripts, .gitattributes, pre-commit and ruff settings, a week."""
    for tool in ("git-nbdiffdriver", "pre-commit", "ruff"):
        if not (BIN / tool).exists():
            pytest.skip(f"{tool} is not installed in {BIN}: run `make setup`")
    repo = tmp_path / "course"
    for name in (".gitattributes", ".pre-commit-config.yaml", "pyproject.toml", "scripts/git-setup.sh",
                 "weeks/01_patching.ipynb", "solutions/01_patching.ipynb"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    (repo / ".venv").symlink_to(BIN.parent)  # the hooks run .venv/bin/ruff, as in a real clone
    (repo / ".gitignore").write_text(".venv\n")
    assert _git(repo, "init", "-q", "-b", "main").returncode == 0
    _git(repo, "add", "-A")
    assert _git(repo, "commit", "-q", "-m", "the course").returncode == 0
    setup = subprocess.run(["bash", "scripts/git-setup.sh", str(BIN)], cwd=repo, capture_output=True, text=True)
    assert setup.returncode == 0, setup.stderr
    return repo


def test_git_diff_of_a_notebook_shows_cells_not_json(clone):
    path = clone / "weeks" / "01_patching.ipynb"
    nb = nbformat.read(path, as_version=4)
    exercise = next(c for c in nb.cells if "exercise" in c.metadata.get("tags", []))
    exercise.source = exercise.source.replace("raise NotImplementedError", "return images  # my first try\n    raise NotImplementedError")
    nbformat.write(nb, path)
    nbformat.write(_ran(nb), path)  # ... and the student ran it: outputs everywhere
    diff = _git(clone, "diff", "weeks/01_patching.ipynb")
    assert diff.returncode == 0, diff.stderr
    assert "## modified /cells/" in diff.stdout and "my first try" in diff.stdout, diff.stdout
    assert '"cell_type":' not in diff.stdout and '"source": [' not in diff.stdout
    # what a commit would store: the check cells' new outputs, not the rest of the run
    assert "my check passed" in diff.stdout and "debug print" not in diff.stdout, diff.stdout


def test_git_diff_of_a_solution_shows_everything(clone):
    path = clone / "solutions" / "01_patching.ipynb"
    nbformat.write(_ran(nbformat.read(path, as_version=4)), path)
    diff = _git(clone, "diff", "solutions/01_patching.ipynb")
    assert "## " in diff.stdout and "debug print" in diff.stdout, diff.stdout


def test_committing_a_student_notebook_strips_only_what_should_go(clone):
    path = clone / "weeks" / "01_patching.ipynb"
    nb = _ran(nbformat.read(path, as_version=4))
    exercise = next(c for c in nb.cells if "exercise" in c.metadata.get("tags", []))
    exercise.source += "\n# my answer"
    nbformat.write(nb, path)
    assert "debug print" in path.read_text(encoding="utf-8")
    _git(clone, "add", "weeks/01_patching.ipynb")
    commit = _git(clone, "commit", "-m", "my week 01")
    assert commit.returncode == 0, commit.stdout + commit.stderr  # pre-commit (ruff) passed
    committed = nbformat.reads(_git(clone, "show", "HEAD:weeks/01_patching.ipynb").stdout, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert "# my answer" in next(c for c in code if "exercise" in c.metadata.get("tags", [])).source
    assert all(c.outputs == [] and c.execution_count is None for c in code if not is_checked(c))
    assert all(c.outputs[0].text == "✓ my check passed\n" and c.execution_count for c in code if is_checked(c))
    assert "widgets" not in committed.metadata
    assert "debug print" in path.read_text(encoding="utf-8"), "the student's own file keeps its outputs"
    assert _git(clone, "status", "--porcelain").stdout == "", "a notebook that was only run shows as unchanged"


def test_solutions_are_not_filtered(clone):
    path = clone / "solutions" / "01_patching.ipynb"
    nb = _ran(nbformat.read(path, as_version=4))
    nbformat.write(nb, path)
    _git(clone, "add", "solutions/01_patching.ipynb")
    staged = _git(clone, "show", ":solutions/01_patching.ipynb").stdout
    assert "debug print" in staged


def test_pre_commit_stops_a_commit_with_an_error_and_says_why(clone):
    (clone / "broken.py").write_text("def f():\n    return undefined_name\n")
    _git(clone, "add", "broken.py")
    commit = _git(clone, "commit", "-m", "oops")
    assert commit.returncode != 0
    said = commit.stdout + commit.stderr
    assert "F821" in said and "undefined_name" in said, said


def test_pre_commit_lints_notebooks_too(clone):
    path = clone / "weeks" / "01_patching.ipynb"
    nb = nbformat.read(path, as_version=4)
    exercise = next(c for c in nb.cells if "exercise" in c.metadata.get("tags", []))
    exercise.source += "\nprint(patches_of_the_image)"
    nbformat.write(nb, path)
    _git(clone, "add", "weeks/01_patching.ipynb")
    commit = _git(clone, "commit", "-m", "week 01 with a typo")
    said = commit.stdout + commit.stderr
    assert commit.returncode != 0 and "F821" in said and "patches_of_the_image" in said, said


def test_git_setup_without_the_environment_says_what_to_do(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "git-setup.sh", tmp_path / "scripts")
    result = subprocess.run(["bash", "scripts/git-setup.sh", str(tmp_path / "nowhere")], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "run 'make setup' first" in result.stderr


# --- every committed notebook is clean ------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_notebook_is_valid_small_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert path.stat().st_size < 200_000, f"{path.name} is {path.stat().st_size:,} bytes"
    assert "widgets" not in nb.metadata
    for cell in nb.cells:
        if cell.cell_type != "code":
            assert "outputs" not in cell and "attachments" not in cell, f"{path.name}: attachment in cell {cell.id}"
            continue
        for output in cell.outputs:
            data = output.get("data", {})
            assert not any(kind.startswith("image/") for kind in data), f"{path.name}: an image is stored in cell {cell.id}"
            assert len(json.dumps(output)) < 10_000, f"{path.name}: a large output in cell {cell.id}"


def test_every_notebook_has_the_same_kernel_spec():
    specs = {p.name if p.parent.name == "solutions" else f"weeks/{p.name}": json.dumps(nbformat.read(p, as_version=4).metadata.get("kernelspec"), sort_keys=True)
             for p in NOTEBOOKS}
    assert len(set(specs.values())) == 1, specs
    assert json.loads(next(iter(specs.values())))["name"] == "python3"


def test_the_repository_passes_the_pre_commit_lint():
    """What the pre-commit hook checks on a commit holds for the whole repository (pyproject's [tool.ruff])."""
    ruff = BIN / "ruff"
    if not ruff.exists():
        pytest.skip(f"ruff is not installed in {BIN}: run `make setup`")
    result = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_notebooks_carry_the_language_info_a_kernel_reports_so_opening_changes_nothing():
    """JupyterLab writes the kernel's language_info into a notebook when it opens it (and marks it modified if it
    differs): the committed notebooks carry it already, for the Python that environment.yml pins."""
    import re

    from nbclient import NotebookClient

    from vitlib.notebooks import LANGUAGE_INFO

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    reported = dict(nb.metadata.language_info)
    assert {k: v for k, v in reported.items() if k != "version"} == {k: v for k, v in LANGUAGE_INFO.items() if k != "version"}
    pinned = re.search(r"^\s*- python=(\S+)", (ROOT / "environment.yml").read_text(), re.M).group(1)
    assert LANGUAGE_INFO["version"] == pinned
    for path in NOTEBOOKS:
        assert nbformat.read(path, as_version=4).metadata.language_info == LANGUAGE_INFO, path.name
