"""The generator of student notebooks and the check helpers every exercise uses."""

from __future__ import annotations

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from vitlib import checks
from vitlib.notebooks import generate, is_checked, lint, student_notebook, stub_source

SOLUTION = '''def patchify(images, p):
    """Docstring stays."""
    ### BEGIN SOLUTION
    x = images
    return x
    ### END SOLUTION'''


def test_stub_keeps_indentation_and_the_rest():
    stub = stub_source(SOLUTION)
    assert stub.splitlines() == [
        "def patchify(images, p):",
        '    """Docstring stays."""',
        "    # YOUR CODE HERE",
        '    raise NotImplementedError("write this exercise, then run the check cell below")',
    ]
    assert "return x" not in stub


@pytest.mark.parametrize(
    "source, message",
    [
        ("### BEGIN SOLUTION\nx = 1", "without '### END SOLUTION'"),
        ("x = 1\n### END SOLUTION", "without '### BEGIN SOLUTION'"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "nested"),
    ],
)
def test_unbalanced_markers(source, message):
    with pytest.raises(ValueError, match=message):
        stub_source(source)


def _output(text: str):
    return new_output("stream", name="stdout", text=text)


def _notebook(check_source: str = "# NBVAL_CHECK_OUTPUT\ncheck(patchify)", check_id: str = "check-patchify"):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    demo = new_code_cell("print('demo')", id="demo", execution_count=1, outputs=[_output("demo\n")])
    exercise = new_code_cell(SOLUTION, id="ex-patchify", metadata={"tags": ["exercise"]}, execution_count=2)
    check = new_code_cell(check_source, id=check_id, metadata={"tags": ["check"]}, execution_count=3, outputs=[_output("✓ ok\n")])
    report = new_code_cell('# NBVAL_CHECK_OUTPUT\nchecks.report_card("patchify")', id="report-card", metadata={"tags": ["report"]},
                           execution_count=4, outputs=[_output("✓ all 1 exercises of this week pass: patchify\n")])
    nb.cells = [new_markdown_cell("# Week", id="intro"), demo, exercise, check, report]
    return nb


def test_student_notebook_stubs_and_keeps_no_output():
    student = student_notebook(_notebook())
    intro, demo, exercise, check, report = student.cells
    assert "NotImplementedError" in exercise.source
    assert all(c.outputs == [] and c.execution_count is None for c in (demo, exercise, check, report)), "a ✓ under a stub"
    assert [c.id for c in student.cells] == ["intro", "demo", "ex-patchify", "check-patchify", "report-card"]
    nbformat.validate(student)


def test_lint_accepts_a_well_formed_notebook():
    assert lint(_notebook()) == []


def test_lint_wants_the_report_card_last():
    nb = _notebook()
    nb.cells.pop()
    assert any("the last code cell must be the report card" in p for p in lint(nb))


@pytest.mark.parametrize(
    "check_source, check_id, problem",
    [
        ("check(patchify)  # NBVAL_CHECK_OUTPUT", "check-patchify", "must stand on a line of its own"),
        ("check(patchify)", "check-patchify", "needs '# NBVAL_CHECK_OUTPUT' on a line of its own"),
        ("# NBVAL_CHECK_OUTPUT\ncheck(patchify)", "check-other", "must have id 'check-patchify'"),
    ],
)
def test_lint_finds_authoring_mistakes(check_source, check_id, problem):
    problems = lint(_notebook(check_source, check_id))
    assert any(problem in p for p in problems), problems


def test_lint_finds_unrun_compared_cells_and_stderr():
    nb = _notebook()
    nb.cells[3].execution_count = None
    nb.cells[1].outputs = [new_output("stream", name="stderr", text="warning")]
    problems = lint(nb)
    assert any("no execution count" in p for p in problems)
    assert any("stderr" in p for p in problems)


def test_trailing_marker_is_not_a_compared_cell():
    assert not is_checked(new_code_cell("print(1)  # NBVAL_CHECK_OUTPUT"))
    assert is_checked(new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)"))
    assert is_checked(new_code_cell("print(1)", metadata={"tags": ["nbval-check-output"]}))


def test_generate_writes_then_reports_up_to_date(tmp_path):
    solutions, weeks = tmp_path / "solutions", tmp_path / "weeks"
    solutions.mkdir(), weeks.mkdir()
    nbformat.write(_notebook(), solutions / "01_x.ipynb")
    assert generate(solutions, weeks, check=True) == ["01_x.ipynb"]
    assert generate(solutions, weeks) == ["01_x.ipynb"]
    assert generate(solutions, weeks, check=True) == []
    (weeks / "99_orphan.ipynb").write_text("{}")
    assert generate(solutions, weeks, check=True) == ["99_orphan.ipynb (no solution)"]


def test_generate_refuses_a_broken_solution(tmp_path):
    solutions, weeks = tmp_path / "solutions", tmp_path / "weeks"
    solutions.mkdir(), weeks.mkdir()
    nbformat.write(_notebook("check(patchify)  # NBVAL_CHECK_OUTPUT"), solutions / "01_x.ipynb")
    with pytest.raises(ValueError, match="authoring rules"):
        generate(solutions, weeks)


# --- the check helpers --------------------------------------------------------------------------


def test_rel_error_is_cs231n():
    assert checks.rel_error(torch.tensor([1.0]), torch.tensor([1.0])) == 0
    assert checks.rel_error(torch.tensor([1.0]), torch.tensor([3.0])) == pytest.approx(0.5)


def test_expect_close_names_expected_got_and_the_known_mistake():
    expected = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    wrong = torch.tensor([[0.3, 0.7], [0.4, 0.6]])
    with pytest.raises(checks.CheckFailed) as info:
        checks.expect_close("weights", wrong, expected, mistakes={"softmax over the wrong axis?": wrong})
    message = str(info.value)
    assert "expected:" in message and "got:" in message and "hint:     softmax over the wrong axis?" in message
    with pytest.raises(checks.CheckFailed, match="wrong shape"):
        checks.expect_close("weights", torch.zeros(3), expected)
    with pytest.raises(checks.CheckFailed, match="wrong dtype"):
        checks.expect_close("weights", expected.double(), expected)
    with pytest.raises(checks.CheckFailed, match="not finite"):
        checks.expect_close("weights", torch.full((2, 2), float("nan")), expected)
    with pytest.raises(checks.CheckFailed, match="expected: a torch.Tensor"):
        checks.expect_close("weights", [0.2], expected)


def test_call_student_turns_a_stub_into_a_clear_not_implemented_error():
    def stub():
        raise NotImplementedError("write this exercise")

    with pytest.raises(NotImplementedError, match="patchify is not written yet"):
        checks.call_student("patchify", stub)

    def crash():
        return 1 / 0

    with pytest.raises(checks.CheckFailed, match="patchify raised ZeroDivisionError"):
        checks.call_student("patchify", crash)


def test_mine_or_reference(capsys):
    checks.reset()
    assert checks.mine_or_reference("x", "mine", "ref") == "ref"
    assert "using vitlib's x" in capsys.readouterr().out
    checks.passed("x", "ok")
    assert checks.mine_or_reference("x", "mine", "ref") == "mine"
    checks.reset()


def test_load_reference_weights_names_the_differences():
    ref = torch.nn.Sequential()
    ref.add_module("proj", torch.nn.Linear(2, 3))
    student = torch.nn.Sequential()
    student.add_module("linear", torch.nn.Linear(2, 3))
    with pytest.raises(checks.CheckFailed, match="missing: proj.bias, proj.weight; unexpected: linear.bias"):
        checks.load_reference_weights("embedding", student, ref)
    wrong_size = torch.nn.Sequential()
    wrong_size.add_module("proj", torch.nn.Linear(2, 4))
    with pytest.raises(checks.CheckFailed, match=r"proj.weight has the wrong shape"):
        checks.load_reference_weights("embedding", wrong_size, ref)


def _week(tmp_path, body: str, check_body: str = "checks.passed('double', 'ok')"):
    nb = new_notebook()
    nb.cells = [
        new_code_cell("from vitlib import checks", id="setup", metadata={"tags": ["setup"]}),
        new_code_cell(f"def double(x):\n    {body}", id="ex-double", metadata={"tags": ["exercise"]}),
        new_code_cell(f"# NBVAL_CHECK_OUTPUT\n{check_body}", id="check-double", metadata={"tags": ["check"]}),
        new_code_cell("raise RuntimeError('a demo cell is never run')", id="demo"),
    ]
    path = tmp_path / "03_week.ipynb"
    nbformat.write(nb, path)
    return path


def _check_double(fn):
    if checks.call_student("double", fn, 2) != 4:
        checks.fail("double", "4", str(fn(2)), "multiply by 2")


def test_from_notebook_takes_the_students_work_when_it_passes(tmp_path, capsys):
    checks.reset()
    path = _week(tmp_path, "return 2 * x")
    mine = checks.from_notebook(path, "double", "reference", check=_check_double)
    assert mine(5) == 10 and "using your double from 03_week.ipynb" in capsys.readouterr().out
    assert checks.has_passed("double")  # the week's own check cells ran, so later exercises can use it
    checks.reset()


@pytest.mark.parametrize(
    "body, reason",
    [
        ('raise NotImplementedError("write this exercise")', "not written yet"),
        ("return 3 * x", "does not pass its check yet"),
    ],
)
def test_from_notebook_falls_back_to_the_reference(tmp_path, capsys, body, reason):
    path = _week(tmp_path, body, check_body="_ = 1")
    assert checks.from_notebook(path, "double", "reference", check=_check_double) == "reference"
    assert reason in capsys.readouterr().out


def test_from_notebook_without_the_file(tmp_path, capsys):
    assert checks.from_notebook(tmp_path / "02_missing", "x", "reference") == "reference"
    assert "02_missing.ipynb not found" in capsys.readouterr().out


def test_lint_finds_widget_state_and_clean_metadata_removes_it():
    from vitlib.notebooks import LANGUAGE_INFO, clean_metadata

    nb = _notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    assert any("widget state" in p for p in lint(nb))
    clean_metadata(nb)
    assert lint(nb) == [] and nb.metadata["language_info"] == LANGUAGE_INFO  # what JupyterLab writes on opening
