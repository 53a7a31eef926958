"""Grade a class: one command, fair, robust, no database.

    python -m vitlib.grade 01_patching submissions/ --out grades/ [--timeout 60] [--jobs 2]

For every submission (a notebook per student: `submissions/<student>.ipynb`, or a folder
`submissions/<student>/` holding it) the grader

1. takes the student's exercise cells only, found by cell id (`ex-NAME`) or, if the student
   deleted and retyped a cell, by the name the exercise defines; everything else is ignored;
2. puts them into a fresh copy of the instructor's notebook (`solutions/WEEK.ipynb`): the
   setup and the check cells are the instructor's, so editing, deleting or faking a check
   changes nothing; before each check, vitlib is imported afresh, so monkeypatching it (the
   checks or the references they compare with) changes nothing either; hidden tests
   (`tests/hidden/WEEK.py`) run after the last exercise, on what each check tested (no cell of
   the student's runs once they are in the kernel, so none can reveal them); demo cells are
   left out (they take time and grade nothing);
3. runs it with nbval (`pytest --nbval-lax`) in its own kernel, in a temporary folder, with a
   per-cell timeout; a check passes when it raises nothing, as in the student's notebook
   (what their code prints or warns along the way does not count); an exercise that hangs or
   kills the kernel gets 0 and the exercises after it are run again in a fresh kernel
   without it;
4. writes `OUT/grades.csv` (student, week, exercise, points, max_points, status, message),
   `OUT/feedback/<student>.md` (hidden tests are never revealed), and a summary on stdout.

Statuses: passed, failed (the check said no, a hidden test said no, or the exercise is still
a stub), error (an exception other than the check's, a kernel crash, or a file that is not a
notebook or is over 100 MB), timeout, missing (no such cell in the submission).
Only `*.ipynb` files and folders are submissions; names starting with "." are skipped.
Submissions are only read, never written. The same submission always gets the same grade.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from vitlib.notebooks import ROOT, stub_source, write_text_atomic

__all__ = ["Exercise", "Result", "load_exercises", "find_submissions", "grade_submission", "grade_class", "main"]

MAX_NOTEBOOK_BYTES = 100_000_000  # stored outputs count: a cell that printed 20 MB is still graded
MAX_MESSAGE_CHARS = 1500
_ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*m")  # colour codes, raw or as junit XML escapes them
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Failed|Interrupt|Exit)): ?(.*)$")
_NBVAL_TIMEOUT = re.compile(r"^Cell \d+: Timeout of ([\d.]+) seconds exceeded(.*)$", re.MULTILINE)  # nbval's line, not the cell's text
_WHO = {"exercise": "your exercise cell", "integrity": "re-importing vitlib", "check": "the check", "hidden": "a hidden test"}
STATUSES = ("passed", "failed", "error", "timeout", "missing")


@dataclass
class Exercise:
    """One exercise of the instructor's notebook."""

    name: str  # from the cell id ex-NAME
    points: float
    source: str  # the instructor's solution cell
    check_source: str
    defines: str | None  # the name the check is called with, e.g. "PatchEmbedding"


@dataclass
class Result:
    student: str
    exercise: str
    points: float
    max_points: float
    status: str
    message: str = ""
    hidden: bool = False  # the failure came from a hidden test (its message is not shown)


@dataclass
class _Week:
    name: str
    notebook: NotebookNode
    exercises: list[Exercise]
    hidden_source: str | None
    hidden_functions: set[str] = field(default_factory=set)


# --- the instructor's side ---------------------------------------------------------------------------


def _check_argument(check_source: str) -> str | None:
    """The name passed to the check call, e.g. `PatchEmbedding` in `checks.patching.check_patch_embedding(PatchEmbedding)`."""
    try:
        tree = ast.parse(check_source)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name):
            return node.args[0].id
    return None


def load_exercises(week: str, solutions: Path = ROOT / "solutions", hidden: Path = ROOT / "tests" / "hidden") -> _Week:
    """The instructor's notebook of `week`, its exercises (id ex-NAME, then check-NAME) and hidden tests."""
    path = solutions / f"{week}.ipynb"
    if not path.is_file():
        known = sorted(p.stem for p in solutions.glob("*.ipynb"))
        raise ValueError(f"no week {week!r}: {path} does not exist; weeks are: {', '.join(known)}")
    nb = nbformat.read(path, as_version=4)
    by_id = {cell.get("id"): cell for cell in nb.cells}
    exercises = []
    for cell in nb.cells:
        cid = cell.get("id", "")
        if cell.cell_type == "code" and cid.startswith("ex-"):
            name = cid[3:]
            check = by_id.get(f"check-{name}")
            if check is None:
                raise ValueError(f"{path.name}: exercise {name!r} has no check cell check-{name}")
            points = float(cell.metadata.get("vitlib", {}).get("points", 1))
            exercises.append(Exercise(name, points, cell.source, check.source, _check_argument(check.source)))
    hidden_path = hidden / f"{week}.py"
    hidden_source = hidden_path.read_text(encoding="utf-8") if hidden_path.is_file() else None
    functions = set()
    if hidden_source:
        functions = {n.name for n in ast.parse(hidden_source).body if isinstance(n, ast.FunctionDef)}
    return _Week(week, nb, exercises, hidden_source, functions)


# --- the student's side ---------------------------------------------------------------------------


def find_submissions(folder: Path, week: str) -> dict[str, Path | None]:
    """Student id -> their notebook (None: a folder without a notebook for this week).

    Files other than notebooks (a README, the class list, ...) are not submissions.
    """
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of submissions")
    found: dict[str, Path | None] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            candidates = [entry / f"{week}.ipynb"] if (entry / f"{week}.ipynb").is_file() else sorted(entry.glob("*.ipynb"))
            found[entry.name] = candidates[0] if len(candidates) == 1 else None
        elif entry.is_file() and entry.suffix.lower() == ".ipynb":
            found[entry.stem] = entry
    return found


def _read_submission(path: Path | None) -> tuple[list[dict[str, str | None]], str | None]:
    """The submission's code cells as {"id", "source"}, or an error message saying why there are none.

    The JSON is read as it is: nbformat's reader would "repair" duplicate cell ids (renaming all
    but the first) and give random ids to cells without one, and the grader needs them as saved.
    """
    if path is None:
        return [], "no notebook for this week in the student's folder (or several)"
    try:
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            return [], f"the file is {size / 1e6:.0f} MB, over the {MAX_NOTEBOOK_BYTES / 1e6:.0f} MB limit for a notebook"
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
        if isinstance(data, dict) and data.get("nbformat") == 3:  # an old notebook: cells in worksheets
            data = nbformat.convert(nbformat.from_dict(data), 4)
    except UnicodeDecodeError:
        return [], "the file is not a notebook (not text)"
    except ValueError as error:
        return [], f"the file is not a valid notebook ({str(error).splitlines()[0][:200]})"
    except Exception as error:  # an unreadable file, or a broken old notebook
        return [], f"the file is not a valid notebook ({type(error).__name__})"
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        return [], "the file is not a notebook (it has no list of cells)"
    code = [c for c in cells if isinstance(c, dict) and c.get("cell_type") == "code"]
    return [{"id": c.get("id") if isinstance(c.get("id"), str) else None, "source": _text(c.get("source"))} for c in code], None


def _text(source: object) -> str:
    """A cell's source as saved: a string, or a list of lines (anything else counts as empty)."""
    if isinstance(source, str):
        return source
    if isinstance(source, list):
        return "".join(line for line in source if isinstance(line, str))
    return ""


def _defines(source: str, name: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):  # not Python (ValueError: a null byte)
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.name == name:
            return True
    return False


def _student_source(cells: list[dict[str, str | None]], exercise: Exercise) -> str | None:
    """The student's cell for `exercise`: by id (the last of several); else the last cell defining its name; else None."""
    by_id = [c["source"] for c in cells if c["id"] == f"ex-{exercise.name}"]
    if by_id:
        return by_id[-1]
    if exercise.defines:
        retyped = [c["source"] for c in cells if _defines(c["source"], exercise.defines)]
        if retyped:
            return retyped[-1]
    return None


# --- the graded notebook ------------------------------------------------------------------------------

_FRESH_VITLIB = """\
# vitlib.grade: vitlib and its checks as shipped, whatever the exercise cells did to them
import importlib, sys
_passed = set(getattr(sys.modules.get("vitlib.checks"), "_PASSED", ()))  # for checks.mine_or_reference
_loaded = sorted(m for m in sys.modules if m == "vitlib" or m.startswith("vitlib."))
for _name in _loaded:
    del sys.modules[_name]
for _name in _loaded:  # the same modules, imported afresh from their files
    importlib.import_module(_name)
import vitlib
import vitlib.checks
vitlib.checks._PASSED.update(_passed)
from vitlib import checks"""

_KEEP = """
_graded_by_vitlib = globals().get("_graded_by_vitlib", {{}})
_graded_by_vitlib[{name!r}] = globals().get({name!r})  # what the check tests is what the hidden test gets"""


def _graded_notebook(
    week: _Week, sources: dict[str, str], stubbed: set[str]
) -> tuple[NotebookNode, list[tuple[str, str]]]:
    """The instructor's notebook with the student's exercise cells; returns it and (exercise, role) per code cell.

    No cell keeps a stored output, so nbval compares none: a cell passes when it raises nothing.
    """
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(week.notebook.metadata.get("kernelspec", {"name": "python3"}))}
    roles: list[tuple[str, str]] = []
    modules = sorted(set(re.findall(r"checks\.(\w+)\.check_", "".join(e.check_source for e in week.exercises))))

    def add(source: str, exercise: str, role: str) -> None:
        nb.cells.append(nbformat.v4.new_code_cell(source))
        roles.append((exercise, role))

    by_id = {c.get("id"): c for c in week.notebook.cells}
    for cell in week.notebook.cells:
        if cell.cell_type == "code" and "setup" in cell.metadata.get("tags", []):
            add(cell.source, "", "setup")
    hidden = []  # run last: a later exercise cell could raise an error quoting them
    for exercise in week.exercises:
        if exercise.name in stubbed:
            add(stub_source(exercise.source), exercise.name, "stub")
            continue
        add(sources[exercise.name], exercise.name, "exercise")
        fresh = _FRESH_VITLIB + "".join(f"\nimport vitlib.checks.{m}" for m in modules)
        add(fresh + (_KEEP.format(name=exercise.defines) if exercise.defines else ""), exercise.name, "integrity")
        add(by_id[f"check-{exercise.name}"].source, exercise.name, "check")
        if week.hidden_source and f"hidden_{exercise.name}" in week.hidden_functions and exercise.defines:
            hidden.append((exercise.name, f"{week.hidden_source}\n\nhidden_{exercise.name}(_graded_by_vitlib[{exercise.defines!r}])"))
    for name, source in hidden:
        add(source, name, "hidden")
    return nb, roles


def _cell_outcomes(junit: Path) -> list[tuple[str, str]]:
    """(outcome, message) per nbval item in order; outcome is passed, failed, skipped or xfail."""
    if not junit.is_file():
        return []
    outcomes = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        failure = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
        if failure is not None or error is not None:
            node = failure if failure is not None else error
            outcomes.append(("failed", _ANSI.sub("", (node.get("message") or "") + "\n" + (node.text or ""))))
        elif skipped is not None:
            outcomes.append(("xfail" if "xfail" in (skipped.get("type") or "") else "skipped", skipped.get("message") or ""))
        else:
            outcomes.append(("passed", ""))
    return outcomes


def _short_message(text: str) -> str:
    """The exception a cell raised, from nbval's report: the check's own message where there is one."""
    lines = [line.rstrip() for line in text.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[i].strip())
        if match:
            kind, first = match.groups()
            rest = [line for line in lines[i + 1 :] if line.strip()]
            message = "\n".join([f"{kind.split('.')[-1]}: {first}"] + rest)
            return message[:MAX_MESSAGE_CHARS]
    timeout = _NBVAL_TIMEOUT.search(text)
    if timeout:
        return timeout.group(0)[:MAX_MESSAGE_CHARS]
    return (lines[0] if lines else "failed")[:MAX_MESSAGE_CHARS]


def _run_nbval(nb: NotebookNode, workdir: Path, timeout: float) -> list[tuple[str, str]]:
    """Run `nb` under nbval in `workdir`; the outcome of each code cell, in order."""
    path = workdir / "graded.ipynb"
    nbformat.write(nb, path)
    (workdir / "pytest.ini").write_text("[pytest]\n")
    junit = workdir / "result.xml"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(workdir / "pytest.ini"),
        "--rootdir", str(workdir), "--nbval-lax", "--nbval-current-env",
        f"--nbval-cell-timeout={timeout:g}", f"--junitxml={junit}", str(path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}
    env.pop("VITLIB_BUDGET", None)
    try:
        subprocess.run(
            command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=timeout * (len(nb.cells) + 2) + 60, start_new_session=True,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pass  # what finished is in the junit file, if pytest got that far
    return _cell_outcomes(junit)


def grade_submission(week: _Week, student: str, path: Path | None, timeout: float = 60.0) -> list[Result]:
    """Grade one student's notebook for `week` (never modifies it)."""
    cells, problem = _read_submission(path)
    results: dict[str, Result] = {}
    sources: dict[str, str] = {}
    for exercise in week.exercises:
        source = None if problem else _student_source(cells, exercise)
        if source is None:
            if problem:
                results[exercise.name] = Result(student, exercise.name, 0.0, exercise.points, "error", problem)
            else:
                message = f"no cell ex-{exercise.name} (nor one defining {exercise.defines}) in the submission"
                results[exercise.name] = Result(student, exercise.name, 0.0, exercise.points, "missing", message)
        else:
            sources[exercise.name] = source
    stubbed = {e.name for e in week.exercises if e.name not in sources}
    with tempfile.TemporaryDirectory(prefix="vitlib-grade-") as tmp:
        attempt = 0
        while len(results) < len(week.exercises) and attempt <= len(week.exercises):
            attempt += 1
            workdir = Path(tmp) / f"run{attempt}"
            workdir.mkdir()
            nb, roles = _graded_notebook(week, sources, stubbed)
            outcomes = _run_nbval(nb, workdir, timeout)
            broken = _collect(week, student, roles, outcomes, results)
            if broken is None:
                break
            stubbed.add(broken)
    for exercise in week.exercises:  # anything not reached: the run never got there
        results.setdefault(
            exercise.name, Result(student, exercise.name, 0.0, exercise.points, "error", "the grading run stopped before this exercise")
        )
    return [results[e.name] for e in week.exercises]


def _collect(week: _Week, student: str, roles, outcomes, results: dict[str, Result]) -> str | None:
    """Fill `results` from one run; return the exercise that hung or crashed (to stub out next run), if any."""
    points = {e.name: e.points for e in week.exercises}
    last_cell = {exercise: i for i, (exercise, _) in enumerate(roles)}
    by_exercise: dict[str, list[tuple[str, str, str]]] = {}
    for i, (exercise, role) in enumerate(roles):
        outcome, text = outcomes[i] if i < len(outcomes) else ("unrun", "")
        if role == "setup":
            if outcome in ("failed", "unrun"):  # the instructor's setup failed: nothing can be graded
                for e in week.exercises:
                    results.setdefault(e.name, Result(student, e.name, 0.0, points[e.name], "error", f"setup failed: {_short_message(text)}"))
                return None
            continue
        if role == "stub" or exercise in results:
            continue
        if outcome in ("xfail", "unrun"):
            return None  # after a hang or crash: graded in the next run
        by_exercise.setdefault(exercise, []).append((role, outcome, text))
        timeout = _NBVAL_TIMEOUT.search(text) if outcome == "failed" else None
        if timeout:
            seconds, rest = timeout.groups()
            if "Failed to interrupt kernel" in rest:  # nbval cannot tell a dead kernel from a deaf one
                status, message = "error", (
                    "the kernel died (or could not be interrupted) while running this exercise: "
                    "a crash, os._exit, running out of memory, or a loop that ignores interrupts?"
                )
            else:
                status, message = "timeout", f"{_WHO[role]} ran longer than the {seconds} s limit: an infinite loop?"
            results[exercise] = Result(student, exercise, 0.0, points[exercise], status, message)
            return exercise
        if i == last_cell[exercise]:
            results[exercise] = _verdict(student, exercise, points[exercise], by_exercise[exercise])
    return None


def _verdict(student: str, exercise: str, points: float, cells: list[tuple[str, str, str]]) -> Result:
    outcome = {role: (result, text) for role, result, text in cells}
    ex_result, ex_text = outcome.get("exercise", ("passed", ""))
    integrity_result, integrity_text = outcome.get("integrity", ("passed", ""))
    check_result, check_text = outcome.get("check", ("passed", ""))
    hidden_result, _ = outcome.get("hidden", ("passed", ""))
    if ex_result == "failed":
        message = _short_message(ex_text)
        if message.startswith("NotImplementedError"):
            return Result(student, exercise, 0.0, points, "failed", "not written yet (the exercise cell still raises NotImplementedError)")
        return Result(student, exercise, 0.0, points, "error", f"the exercise cell raised {message}")
    if integrity_result == "failed":  # the exercise cell broke vitlib so that it cannot be imported afresh
        return Result(student, exercise, 0.0, points, "error", f"re-importing vitlib after the exercise cell raised {_short_message(integrity_text)}")
    if check_result == "failed":
        message = _short_message(check_text)
        if message.startswith("NotImplementedError"):
            return Result(student, exercise, 0.0, points, "failed", "not written yet")
        status = "failed" if message.startswith(("CheckFailed", "AssertionError")) else "error"
        return Result(student, exercise, 0.0, points, status, message)
    if hidden_result == "failed":
        return Result(student, exercise, 0.0, points, "failed", "passed its check, but failed a hidden test", hidden=True)
    return Result(student, exercise, points, points, "passed", "")


# --- the class ---------------------------------------------------------------------------------------


def _feedback(week: str, student: str, results: list[Result]) -> str:
    total, maximum = sum(r.points for r in results), sum(r.max_points for r in results)
    lines = [f"# {week}: feedback for {student}", "", f"**{total:g} / {maximum:g} points**", ""]
    lines += ["| exercise | points | status |", "|---|---|---|"]
    lines += [f"| {r.exercise} | {r.points:g} / {r.max_points:g} | {r.status} |" for r in results]
    for r in results:
        if r.status != "passed":
            lines += ["", f"## {r.exercise}: {r.status}", "", "```", r.message, "```"]
    lines += ["", "Run the check cell after each exercise in your notebook: it says the same as the grader."]
    return "\n".join(lines) + "\n"


def grade_class(
    week: str,
    submissions: Path,
    out: Path,
    timeout: float = 60.0,
    jobs: int | None = None,
    solutions: Path = ROOT / "solutions",
    hidden: Path = ROOT / "tests" / "hidden",
    progress: bool = True,
) -> list[Result]:
    """Grade every submission in `submissions`; write grades.csv and feedback/ under `out`."""
    instructor = load_exercises(week, solutions, hidden)
    students = find_submissions(submissions, week)
    if not students:
        raise ValueError(f"no submissions in {submissions}")
    jobs = jobs or os.cpu_count() or 1
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {s: pool.submit(grade_submission, instructor, s, p, timeout) for s, p in students.items()}
        for _ in tqdm(as_completed(futures.values()), total=len(futures), desc=f"grading {week}", disable=not progress, file=sys.stderr):
            pass
        graded = {s: f.result() for s, f in futures.items()}

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", "week", "exercise", "points", "max_points", "status", "message"])
    all_results = []
    for student in sorted(graded):
        for r in graded[student]:
            writer.writerow([student, week, r.exercise, f"{r.points:g}", f"{r.max_points:g}", r.status, r.message])
            all_results.append(r)
        write_text_atomic(out / "feedback" / f"{student}.md", _feedback(week, student, graded[student]))
    write_text_atomic(out / "grades.csv", buffer.getvalue())
    return all_results


def _summary(week: str, results: list[Result]) -> str:
    students = sorted({r.student for r in results})
    exercises = list(dict.fromkeys(r.exercise for r in results))
    totals = {s: sum(r.points for r in results if r.student == s) for s in students}
    maximum = sum(r.max_points for r in results if r.student == students[0])
    lines = [f"{week}: {len(students)} submissions, mean {sum(totals.values()) / len(students):.2f} / {maximum:g} points"]
    for name in exercises:
        rows = [r for r in results if r.exercise == name]
        counts = {status: sum(r.status == status for r in rows) for status in STATUSES}
        lines.append(f"  {name:28s} " + "  ".join(f"{s} {n}" for s, n in counts.items() if n))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlib.grade", description="Grade a class's notebooks for one week.")
    parser.add_argument("week", help="a core week, e.g. 01_patching")
    parser.add_argument("submissions", type=Path, help="a folder: one notebook per student (or one folder per student)")
    parser.add_argument("--out", type=Path, default=Path("grades"), help="where grades.csv and feedback/ go (default: grades)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per cell (default: 60)")
    parser.add_argument("--jobs", type=int, default=None, help="submissions graded at once (default: the number of cores)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or (args.jobs is not None and args.jobs < 1):
        parser.error("--timeout must be > 0 and --jobs ≥ 1")
    try:
        results = grade_class(args.week, args.submissions, args.out, args.timeout, args.jobs, progress=not args.no_progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(_summary(args.week, results))
    print(f"wrote {args.out / 'grades.csv'} and {len({r.student for r in results})} feedback files in {args.out / 'feedback'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
