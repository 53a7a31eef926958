"""What a failing check shows: its message only, a stub in one line, a crash with the student's own lines.

The notebook side (a check that reports and lets Run All go on, the report card) is run in a
real kernel by tests/test_notebooks.py and in JupyterLab by tests/test_lab.py; here are the
pieces, and the terminal, where a check still raises.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from vitlib import checks
from vitlib.checks import CheckFailed, ExercisesNotPassed, NotWrittenYet
from vitlib.checks.attention import check_attention_scores
from vitlib.checks.feedback import render
from check_helpers import stub


def _failure(check, student) -> BaseException:
    with pytest.raises((CheckFailed, NotImplementedError)) as info:
        check(student)
    return info.value


def _plain(lines: list[str]) -> str:
    return "\n".join(lines).replace("\x1b[31m", "").replace("\x1b[1m", "").replace("\x1b[0m", "")


def test_a_wrong_value_renders_as_its_message_only():
    failure = _failure(check_attention_scores, lambda q, k: q @ k.transpose(-2, -1))
    shown = _plain(failure._render_traceback_())
    assert len(shown.splitlines()) <= 8, shown
    assert shown.startswith("✗ attention_scores") and all(p in shown for p in ("expected:", "got:", "differs:", "hint:"))
    assert "vitlib" not in shown and "Traceback" not in shown and "q @ k.transpose(-2, -1) / math.sqrt" not in shown


def test_a_stub_renders_as_one_line_that_says_what_to_do():
    failure = _failure(check_attention_scores, stub)
    assert isinstance(failure, NotWrittenYet) and isinstance(failure, NotImplementedError)
    (line,) = failure._render_traceback_()
    assert "attention_scores is not written yet" in line and "raise NotImplementedError" in line


def _crashes_on_batches(q, k):
    d_k = q.shape[-1]
    return q @ k.T / math.sqrt(d_k)  # k.T reverses every axis of a batched k


def _crashes_otherwise(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + torch_is_not_imported  # noqa: F821


@pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")  # torch's own warning for k.T, as the student sees it
def test_a_crash_keeps_the_students_own_lines_and_the_checks_hint_for_what_it_sees():
    failure = _failure(check_attention_scores, _crashes_on_batches)
    shown = _plain(render(failure))
    assert "raised RuntimeError" in shown.splitlines()[0]
    assert "in test_feedback.py, line" in shown and "return q @ k.T / math.sqrt(d_k)" in shown, shown
    assert "k.transpose(-2, -1)" in shown.splitlines()[-1], shown  # the check's own hint for k.T
    assert "vitlib" not in shown and len(shown.splitlines()) <= 8, shown


def test_a_crash_the_check_has_no_hint_for_gets_no_made_up_cause():
    shown = _plain(render(_failure(check_attention_scores, _crashes_otherwise)))
    assert "NameError" in shown and "torch_is_not_imported" in shown
    assert "hint:     the lines above are where your code raised it" in shown, shown
    assert "k.T" not in shown and "√d_k" not in shown


def test_the_report_card_names_what_passes_and_what_does_not():
    checks.reset()
    check_attention_scores(lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))
    with pytest.raises(CheckFailed):
        check_attention_scores(lambda q, k: q @ k.transpose(-2, -1))  # broken again: no longer passes
    assert not checks.has_passed("attention_scores")
    with pytest.raises(ExercisesNotPassed) as info:
        checks.report_card("attention_scores", "softmax")
    shown = _plain(info.value._render_traceback_())
    assert shown.splitlines()[0] == "0 of 2 exercises pass so far:"
    assert "✗ attention_scores: attention_scores(q of shape (4, 16), k of shape (6, 16)): wrong values" in shown
    assert "· softmax: its check has not run yet" in shown
    checks.reset()


def test_whose_labels_what_a_demo_ran():
    checks.reset()
    assert checks.whose("attention_scores") == "vitlib's"
    check_attention_scores(lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))
    assert checks.whose("attention_scores") == "your" and checks.whose("attention_scores", "softmax") == "vitlib's"
    checks.reset()


def test_checks_report_only_in_a_jupyter_kernel_and_raise_everywhere_else(capsys):
    with checks.reporting(True):
        assert check_attention_scores(stub) is None  # reported, not raised
    assert "is not written yet" in capsys.readouterr().out
    with pytest.raises(NotWrittenYet):
        check_attention_scores(stub)  # here (pytest) no Jupyter kernel runs: it raises


@pytest.mark.parametrize("shell", ["python", "ipython"])
def test_in_the_terminal_a_failing_check_still_fails_with_its_message(shell):
    code = "from vitlib.checks.attention import check_attention_scores as c; c(lambda q, k: q @ k.transpose(-2, -1))"
    command = [sys.executable, "-c", code] if shell == "python" else [sys.executable, "-m", "IPython", "--colors=NoColor", "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    said = result.stdout + result.stderr
    assert "✗ attention_scores" in said and "hint:" in said, said
    if shell == "python":
        assert result.returncode == 1
    else:  # IPython shows the message alone (the exception's _render_traceback_), not vitlib's frames
        assert "Traceback" not in said and "vitlib/checks" not in said, said


def test_the_judge_never_only_reports_a_failure(monkeypatch):
    """Even where reporting is on (as in a kernel), the grader's judge sees a failing check raise."""
    from vitlib import grade, judge

    week = grade.load_exercises("02_attention")
    exercise = next(e for e in week.exercises if e.name == "attention_scores")
    with checks.reporting(True):
        the_judge = judge.Judge(week, judge.Job.__new__(judge.Job))
        with pytest.raises(CheckFailed):
            the_judge._run_check(exercise, lambda q, k: q @ k.transpose(-2, -1), 0)
