"""What a student sees when a check runs: its message and nothing else, and a notebook that runs to the end.

Three things are decided here.

1. **A failure shows only its message.** `CheckFailed`, `NotWrittenYet` and `ExercisesNotPassed`
   define `_render_traceback_`, the hook IPython uses instead of a traceback. A failing check
   shows its ✗ line, expected, got and hint (a few lines, no frame of vitlib, none of the
   check's source); a stub shows one line. When the student's own code raised, the lines of
   the student's code that raised are kept (that is where the bug is), vitlib's are not.
2. **Run All reaches the end.** In a Jupyter kernel (JupyterLab, VS Code, Colab) the outermost
   check of a cell *reports* a failure (it prints the same lines) and returns, so that Run All
   goes on and later cells use vitlib's fallback. Everywhere else (the terminal, pytest, the
   grader's judge) a check raises. The last cell of every week, `report_card(...)`, says which
   exercises pass and raises when one does not: nbval over a student's notebook still fails.
3. **Nothing claims a pass that did not happen.** `whose(name)` says "your" or "vitlib's", so a
   demo cell labels what it ran.

`reporting(False)` turns the reporting off (in `from_notebook`, which needs the exceptions).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CheckFailed",
    "NotWrittenYet",
    "ExercisesNotPassed",
    "exercise",
    "report_card",
    "reporting",
    "whose",
    "student_lines",
]

_PASSED: set[str] = set()
_FAILED: dict[str, str] = {}  # name -> what went wrong, in a few words (the report card's line)
_REPORT: bool | None = None  # None: report in a Jupyter kernel, raise elsewhere
_DEPTH = 0  # checks running now: only the outermost one reports

RED, BOLD, RESET = "\x1b[31m", "\x1b[1m", "\x1b[0m"
_LIBRARY = Path(__file__).resolve().parents[1]  # vitlib/
_INSTALLED = tuple(
    str(Path(p).resolve()) for p in {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")} | {sys.prefix, sys.base_prefix} if p
)
MAX_FRAMES = 3


class CheckFailed(AssertionError):
    """A check found a mistake. The message says what was expected, what came, and a likely cause."""

    def _render_traceback_(self) -> list[str]:
        return render(self)


class NotWrittenYet(NotImplementedError):
    """The student's exercise still raises NotImplementedError: one line that says what to do."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"{name} is not written yet: replace `raise NotImplementedError` in the exercise cell above "
            "with your code, run that cell, then run this check again"
        )

    def _render_traceback_(self) -> list[str]:
        return render(self)


class ExercisesNotPassed(AssertionError):
    """Raised by the report card when an exercise of the week does not pass (nbval then fails the notebook)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))

    def _render_traceback_(self) -> list[str]:
        return [f"{RED}{BOLD}{self.lines[0]}{RESET}", *self.lines[1:]]


# --- the student's frames -------------------------------------------------------------------------


def _cell_number(filename: str) -> int | None:
    """The execution count of the notebook cell compiled under `filename` (IPython's own map), or None."""
    try:
        from IPython import get_ipython

        return getattr(getattr(get_ipython(), "compile", None), "_filename_map", {}).get(filename)
    except Exception:  # noqa: BLE001 - no IPython, or another one
        return None


def _is_student_file(filename: str) -> bool:
    """Code a student wrote: a notebook cell, or a file of theirs that is not vitlib, Python or a package."""
    if _cell_number(filename) is not None:
        return True
    try:
        path = Path(filename).resolve()
    except (OSError, ValueError):
        return False
    return path.is_file() and not str(path).startswith((str(_LIBRARY), *_INSTALLED))


def _cell_label(filename: str) -> str:
    """'Cell In[5]' for a notebook cell (as IPython names it), else the file's name."""
    number = _cell_number(filename)
    return f"Cell In[{number}]" if number is not None else Path(filename).name


def student_lines(error: BaseException) -> list[str]:
    """The last few frames of `error`'s traceback that are the student's own code, one line each."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if _is_student_file(f.filename)]
    lines = []
    for frame in frames[-MAX_FRAMES:]:
        code = (frame.line or "").strip()
        code = code if len(code) <= 90 else code[:87] + "..."
        lines.append(f"  in {_cell_label(frame.filename)}, line {frame.lineno}, {frame.name}: {code}")
    return lines


def render(failure: BaseException) -> list[str]:
    """The lines a student sees for a failure: the ✗ line in red, the rest as it is."""
    if isinstance(failure, NotWrittenYet):
        return [f"{RED}○ {failure}{RESET}"]
    lines = str(failure).splitlines() or [type(failure).__name__]
    cause = failure.__cause__
    where = student_lines(cause) if cause is not None else []
    return [f"{RED}{BOLD}{lines[0]}{RESET}", *where, *lines[1:]]


# --- report, or raise -----------------------------------------------------------------------------


def _in_jupyter_kernel() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
        from ipykernel.zmqshell import ZMQInteractiveShell
    except ImportError:
        return False
    return isinstance(get_ipython(), ZMQInteractiveShell)


def _reports() -> bool:
    return _in_jupyter_kernel() if _REPORT is None else _REPORT


@contextlib.contextmanager
def reporting(on: bool | None) -> Iterator[None]:
    """Within the block, checks report (True), raise (False), or decide by where they run (None)."""
    global _REPORT
    before, _REPORT = _REPORT, on
    try:
        yield
    finally:
        _REPORT = before


def _in_a_few_words(failure: BaseException) -> str:
    if isinstance(failure, NotImplementedError):
        return "not written yet"
    first = (str(failure).splitlines() or [type(failure).__name__])[0].removeprefix("✗ ")
    return first if len(first) <= 100 else first[:97] + "..."


def exercise(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate the check of exercise `name`: a failure is remembered (the report card shows it); in a
    Jupyter kernel the outermost check prints it instead of raising, so that Run All goes on."""

    def decorate(check: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(check)
        def run(*args: Any, **kwargs: Any) -> None:
            global _DEPTH
            outermost = _DEPTH == 0
            _DEPTH += 1
            try:
                check(*args, **kwargs)
            except (CheckFailed, NotImplementedError) as failure:
                _PASSED.discard(name)
                _FAILED[name] = _in_a_few_words(failure)
                if not (outermost and _reports()):
                    raise
                print("\n".join(render(failure)))
                return
            finally:
                _DEPTH -= 1
            _FAILED.pop(name, None)

        run.exercise = name  # type: ignore[attr-defined]
        return run

    return decorate


def report_card(*names: str) -> None:
    """The last cell of a week: a line per exercise; raises ExercisesNotPassed unless every one passes."""
    lines = []
    for name in names:
        if name in _PASSED:
            lines.append(f"  ✓ {name}")
        elif name in _FAILED:
            lines.append(f"  ✗ {name}: {_FAILED[name]}")
        else:
            lines.append(f"  · {name}: its check has not run yet")
    passing = sum(name in _PASSED for name in names)
    if passing == len(names):
        print(f"✓ all {len(names)} exercises of this week pass: {', '.join(names)}")
        return
    raise ExercisesNotPassed([f"{passing} of {len(names)} exercises pass so far:", *lines])


def whose(*names: str) -> str:
    """'your' if the checks `names` all passed, else "vitlib's": the label of what a demo cell ran."""
    return "your" if all(name in _PASSED for name in names) else "vitlib's"
