"""The course notebooks: weeks/ generated from solutions/, exercises with checks, stubs that fail cleanly.

nbval itself runs the solution notebooks (`pytest` collects solutions/*.ipynb with --nbval-lax,
see pyproject.toml); this file tests what nbval cannot see.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from vitlib.notebooks import generate, is_checked

ROOT = Path(__file__).resolve().parents[1]
CORE_WEEKS = ["00_setup", "01_patching", "02_attention", "03_encoder", "04_head", "05_training"]
WEEKS = [*CORE_WEEKS, "06_inside_the_vit", "07_transfer", "08_deployment", "09_masked_autoencoder", "10_distillation", "11_synthetic_data"]


def _cells(path: Path):
    return nbformat.read(path, as_version=4).cells


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def test_weeks_are_generated_from_solutions_and_up_to_date():
    stale = generate(check=True)
    assert stale == [], f"weeks/ is out of date with solutions/ ({', '.join(stale)}): run `make notebooks`"


@pytest.mark.parametrize("week", WEEKS)
def test_week_exists_with_three_checked_exercises(week):
    solution, student = ROOT / "solutions" / f"{week}.ipynb", ROOT / "weeks" / f"{week}.ipynb"
    assert solution.exists() and student.exists()
    exercises = [c for c in _cells(solution) if "exercise" in _tags(c)]
    assert len(exercises) >= 3, f"{week} has {len(exercises)} exercises"
    stubs = [c for c in _cells(student) if "exercise" in _tags(c)]
    assert all("raise NotImplementedError" in c.source and "### BEGIN SOLUTION" not in c.source for c in stubs)
    checked = [c for c in _cells(student) if "check" in _tags(c)]
    assert len(checked) == len(exercises) and all(is_checked(c) and c.outputs for c in checked)
    assert all(o.get("text", "").startswith("✓") for c in checked for o in c.outputs)


def test_committed_notebooks_keep_only_compared_outputs():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")) + sorted((ROOT / "weeks").glob("*.ipynb")):
        for cell in _cells(path):
            if cell.cell_type == "code" and not is_checked(cell):
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {cell.id} keeps output"


def _execute(path: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return nb


@pytest.fixture(scope="module")
def shipped_weeks(tmp_path_factory) -> Path:
    """A copy of weeks/ as a student gets it: the notebooks write their runs/ there, not into the repository."""
    folder = tmp_path_factory.mktemp("weeks")
    for path in (ROOT / "weeks").glob("*.ipynb"):
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.parametrize("week", WEEKS)  # in order: week 05's (smoke) checkpoint is there for weeks 06 to 08
def test_weeks_as_shipped_fail_only_in_exercise_cells_with_not_implemented_error(week, shipped_weeks, monkeypatch):
    """A student who has written nothing yet can still run every other cell (the fallbacks work)."""
    monkeypatch.setenv("VITLIB_BUDGET", "smoke")  # the training week runs a few steps, not minutes
    nb = _execute(shipped_weeks / f"{week}.ipynb")
    failures = [
        (cell.id, output.ename, _tags(cell))
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert failures, "the stubs should raise NotImplementedError"
    wrong = [(cid, ename) for cid, ename, tags in failures if ename != "NotImplementedError" or not {"exercise", "check"} & set(tags)]
    assert not wrong, f"cells that fail otherwise than an exercise's NotImplementedError: {wrong}"
    stderr = [cell.id for cell in nb.cells for o in cell.get("outputs", []) if o.get("name") == "stderr" and "Warning" in o.get("text", "")]
    assert not stderr, f"warnings on stderr in cells {stderr}"
