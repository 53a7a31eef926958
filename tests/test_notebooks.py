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
WEEKS = [*CORE_WEEKS, "06_inside_the_vit", "07_transfer", "08_deployment", "09_masked_autoencoder", "10_distillation", "11_synthetic_data", "12_jepa"]


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
    checked = [c for c in _cells(solution) if "check" in _tags(c)]
    assert len(checked) == len(exercises) and all(is_checked(c) and c.outputs for c in checked)
    assert all(o.get("text", "").startswith("✓") for c in checked for o in c.outputs)


def test_committed_notebooks_keep_only_compared_outputs_and_the_weeks_none():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        for cell in _cells(path):
            if cell.cell_type == "code" and not is_checked(cell):
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {cell.id} keeps output"
    for path in sorted((ROOT / "weeks").glob("*.ipynb")):
        kept = [c.id for c in _cells(path) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
        assert not kept, f"weeks/{path.name} shows outputs that the student did not run (a ✓ under a stub): {kept}"


def _check_names(nb) -> list[str]:
    """The exercise names of a notebook's check cells, as their checks record them (`@checks.exercise`)."""
    import importlib
    import re

    names = []
    for cell in nb.cells:
        if "check" in _tags(cell):
            for module, function in re.findall(r"checks\.(\w+)\.(check_\w+)\(", cell.source):
                names.append(getattr(importlib.import_module(f"vitlib.checks.{module}"), function).exercise)
    return names


@pytest.mark.parametrize("week", WEEKS)
def test_the_last_cell_is_the_report_card_of_every_exercise_in_order(week):
    import ast

    nb = nbformat.read(ROOT / "solutions" / f"{week}.ipynb", as_version=4)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    call = next(n for n in ast.walk(ast.parse(last.source)) if isinstance(n, ast.Call))
    assert ast.unparse(call.func) == "checks.report_card"
    assert [a.value for a in call.args] == _check_names(nb)
    assert last.outputs[0].text == f"✓ all {len(call.args)} exercises of this week pass: {', '.join(a.value for a in call.args)}\n"


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
def test_weeks_as_shipped_run_to_the_end_and_only_the_report_card_fails(week, shipped_weeks, monkeypatch):
    """Run All on a fresh week (nbclient stops where JupyterLab's Run All stops): every check says in one line
    that its exercise is not written yet, every other cell runs on the fallbacks, and the last cell fails."""
    monkeypatch.setenv("VITLIB_BUDGET", "smoke")  # the training week runs a few steps, not minutes
    nb = _execute(shipped_weeks / f"{week}.ipynb")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    failures = [(cell.id, output.ename) for cell in code for output in cell.outputs if output.output_type == "error"]
    assert failures == [("report-card", "ExercisesNotPassed")], f"cells that raise (Run All would stop there): {failures}"
    assert all(cell.execution_count for cell in code), "Run All did not reach every cell"
    for cell in code:
        if "check" in _tags(cell):
            text = "".join(o.get("text", "") for o in cell.outputs)
            assert text.count("\n") == 1 and "is not written yet" in text, f"{cell.id}: {text!r}"
    report = "\n".join(code[-1].outputs[-1].traceback)
    assert f"0 of {len(_check_names(nb))} exercises pass" in report and "not written yet" in report
    stderr = [cell.id for cell in nb.cells for o in cell.get("outputs", []) if o.get("name") == "stderr" and "Warning" in o.get("text", "")]
    assert not stderr, f"warnings on stderr in cells {stderr}"


def test_nbval_over_a_students_notebook_still_fails_where_an_exercise_fails(tmp_path):
    """Checks report instead of raising in a kernel, so the report card is what fails under nbval: once, naming the exercises."""
    import subprocess
    import sys

    nb = nbformat.read(ROOT / "weeks" / "02_attention.ipynb", as_version=4)
    solution = {c.id: c.source for c in nbformat.read(ROOT / "solutions" / "02_attention.ipynb", as_version=4).cells}
    for cell in nb.cells:
        if cell.id in ("ex-attention_scores", "ex-attention"):
            cell.source = solution[cell.id]
    nbformat.write(nb, tmp_path / "student.ipynb")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "student.ipynb"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "1 failed" in result.stdout and "checks.report_card(" in result.stdout, result.stdout[-2000:]  # the last cell only
    assert "2 of 3 exercises pass so far" in result.stdout and "✗ softmax: not written yet" in result.stdout


def _week05_data_cell(dataset: str) -> nbformat.NotebookNode:
    """Week 05's setup and data cells, with its one line set to ``DATASET = dataset``."""
    nb = nbformat.read(ROOT / "solutions" / "05_training.ipynb", as_version=4)
    cells = {cell.get("id"): cell for cell in nb.cells}
    data = cells["data"].source
    line = 'DATASET = "fashion-mnist"'
    assert data.count(line) == 1, "week 05 should choose its data set in one line"
    nb.cells = [cells["setup"], nbformat.v4.new_code_cell(data.replace(line, f"DATASET = {dataset!r}"))]
    return nb


@pytest.mark.parametrize("has_mnist", [True, False])
def test_week_05_switches_to_mnist_in_one_line(has_mnist, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    from data_files import make_idx_split

    if has_mnist:
        make_idx_split(tmp_path / "MNIST" / "raw", "train", 100)
        make_idx_split(tmp_path / "MNIST" / "raw", "test", 40, seed=1)
    monkeypatch.setenv("VITLIB_DATA", str(tmp_path))
    monkeypatch.setenv("VITLIB_BUDGET", "cpu")
    nb = _week05_data_cell("mnist")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(out.get("text", "") for out in nb.cells[-1].outputs)
    if has_mnist:
        assert "data: mnist from" in text and "recipe 'mnist-cpu'" in text, text
        assert "100 training and 40 test images" in text, text
    else:  # no bundled MNIST: the bundled Fashion-MNIST subset, said in one line
        assert "No local mnist: using the bundled Fashion-MNIST subset" in text, text
        assert "recipe 'fashion-mnist-small'" in text, text
