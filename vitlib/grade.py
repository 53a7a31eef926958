"""Grade a class: one command, fair, no database, and no way for a student's code to change a verdict.

    python -m vitlib.grade 01_patching submissions/ --out grades/ [--timeout 60] [--jobs 2] [--seed N] [--sandbox auto]

For every submission (a notebook per student: `submissions/<student>.ipynb`, or a folder
`submissions/<student>/` holding it) the grader

1. takes the student's exercise cells only, found by cell id (`ex-NAME`) or, if the student
   deleted and retyped a cell, by the name the exercise defines; everything else is ignored;
2. hands them to a judge (`vitlib.judge`, a worker process that never runs student code), which
   runs them after the instructor's setup cells with nbval, in a kernel of their own inside
   the OS sandbox where there is one (`vitlib.sandbox`), with vitlib's answers to the week's
   exercises withheld (`vitlib.withheld`). The judge runs the instructor's checks and hidden
   tests in its own process; each time they use the student's function or module, the kernel
   computes and sends back data (`vitlib.remote`, `vitlib.probe`). So nothing the student's code
   does in its kernel (patching torch, IPython, vitlib or the import machinery, faking output,
   rewriting files, exiting) reaches the verdict: at worst its own results are wrong;
3. scores the code's similarity to vitlib, to the solution and to the other submissions with
   copydetect (`vitlib.similarity`): a flag for the instructor, not a change of points;
4. writes `OUT/grades.csv` (student, week, exercise, points, max_points, status, message,
   similarity, similar_to), `OUT/feedback/<student>.md` (hidden tests are never revealed),
   `OUT/similarity.md`, and a summary on stdout.

Statuses: passed; failed (the check said no, a hidden test or the grader's own inputs said no,
or the exercise is still a stub); uses_reference (the code calls vitlib's own answer: 0
points); error (an exception other than the check's, a kernel crash, or a file that is not a
notebook or is over 100 MB); timeout; missing (no such cell in the submission).
Only `*.ipynb` files and folders are submissions; names starting with "." are skipped.
Submissions are only read, never written. The same submission always gets the same grade.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import io
import json
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import nbformat

from vitlib import sandbox, similarity
from vitlib.judge import WITHOUT_RFC3987, Exercise, Week, load_exercises
from vitlib.notebooks import ROOT, write_text_atomic

__all__ = ["Exercise", "Result", "load_exercises", "find_submissions", "grade_class", "main"]

MAX_NOTEBOOK_BYTES = 100_000_000  # stored outputs count: a cell that printed 20 MB is still graded
STATUSES = ("passed", "failed", "uses_reference", "error", "timeout", "missing")
FLAG = 0.8  # similarity at or above which a row is flagged for the instructor


@dataclass
class Result:
    student: str
    exercise: str
    points: float
    max_points: float
    status: str
    message: str = ""
    hidden: bool = False  # the failure came from a hidden test or the grader's inputs (no details shown)
    similarity: float = 0.0
    similar_to: str = ""


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


# --- the judges -----------------------------------------------------------------------------------------


class _Judges:
    """A pool of judge worker processes (`vitlib.judge.main`, started without rfc3987_syntax), one per job slot, reused across students."""

    def __init__(self) -> None:
        self._free: queue.Queue[subprocess.Popen] = queue.Queue()
        self._all: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        worker = subprocess.Popen(
            [sys.executable, "-c", WITHOUT_RFC3987 + "from vitlib.judge import main; sys.exit(main())"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        with self._lock:
            self._all.append(worker)
        return worker

    def ask(self, job: dict) -> dict:
        try:
            worker = self._free.get_nowait()
        except queue.Empty:
            worker = self._start()
        try:
            worker.stdin.write(json.dumps(job) + "\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            answer = json.loads(line) if line else {"fault": "the judge stopped"}
        except (OSError, ValueError) as error:
            answer = {"fault": f"the judge failed ({type(error).__name__})"}
        if worker.poll() is None and "fault" not in answer:
            self._free.put(worker)
        else:
            worker.kill()
        return answer

    def close(self) -> None:
        for worker in self._all:
            if worker.poll() is None:
                worker.stdin.close()
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()


def default_seed(week: Week) -> int:
    """The grading seed when none is given: fixed by the week's hidden tests, so a class grades the same every time."""
    digest = hashlib.sha256(f"{week.name}\n{week.hidden_source or ''}".encode()).digest()
    return 1 + int.from_bytes(digest[:4], "big") % 1_000_000


def grade_submission(week: Week, student: str, path: Path | None, judges: _Judges, job: dict) -> list[Result]:
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
    if sources:
        answer = judges.ask({**job, "student": student, "sources": sources})
        verdicts = {v["exercise"]: v for v in answer.get("verdicts", [])}
        for exercise in week.exercises:
            if exercise.name not in sources:
                continue
            v = verdicts.get(exercise.name) or {"status": "error", "message": f"the grader failed: {answer.get('fault', 'no verdict')}"}
            points = exercise.points if v["status"] == "passed" else 0.0
            results[exercise.name] = Result(student, exercise.name, points, exercise.points, v["status"], v.get("message", ""), v.get("hidden", False))
    return [results[e.name] for e in week.exercises]


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
    seed: int | None = None,
    use_sandbox: bool = True,
) -> list[Result]:
    """Grade every submission in `submissions`; write grades.csv, feedback/ and similarity.md under `out`."""
    instructor = load_exercises(week, solutions, hidden)
    students = find_submissions(submissions, week)
    if not students:
        raise ValueError(f"no submissions in {submissions}")
    jobs = jobs or os.cpu_count() or 1
    from tqdm.auto import tqdm

    judges = _Judges()
    hide = [str(p) for p in (ROOT, solutions.resolve(), hidden.resolve(), submissions.resolve(), out.resolve())]
    job = {"week": week, "timeout": timeout, "seed": default_seed(instructor) if seed is None else seed,
           "sandbox": use_sandbox, "hide": hide, "solutions": str(solutions), "hidden": str(hidden)}  # fmt: skip
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {s: pool.submit(grade_submission, instructor, s, p, judges, job) for s, p in students.items()}
            for _ in tqdm(as_completed(futures.values()), total=len(futures), desc=f"grading {week}", disable=not progress, file=sys.stderr):
                pass
            graded = {s: f.result() for s, f in futures.items()}
    finally:
        judges.close()
    similarity.score(instructor, {s: _sources_of(p, instructor) for s, p in students.items()}, graded)
    _write_reports(week, graded, out)
    return [r for student in sorted(graded) for r in graded[student]]


def _sources_of(path: Path | None, week: Week) -> dict[str, str]:
    cells, problem = _read_submission(path)
    if problem:
        return {}
    return {e.name: s for e in week.exercises if (s := _student_source(cells, e)) is not None}


def _write_reports(week: str, graded: dict[str, list[Result]], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", "week", "exercise", "points", "max_points", "status", "message", "similarity", "similar_to"])
    for student in sorted(graded):
        for r in graded[student]:
            writer.writerow([student, week, r.exercise, f"{r.points:g}", f"{r.max_points:g}", r.status, r.message, f"{r.similarity:.2f}", r.similar_to])
        write_text_atomic(out / "feedback" / f"{student}.md", _feedback(week, student, graded[student]))
    write_text_atomic(out / "grades.csv", buffer.getvalue())
    write_text_atomic(out / "similarity.md", similarity.report(week, [r for s in sorted(graded) for r in graded[s]], FLAG))


def _summary(week: str, results: list[Result], box: sandbox.Sandbox | None = None) -> str:
    students = sorted({r.student for r in results})
    exercises = list(dict.fromkeys(r.exercise for r in results))
    totals = {s: sum(r.points for r in results if r.student == s) for s in students}
    maximum = sum(r.max_points for r in results if r.student == students[0])
    lines = [f"{week}: {len(students)} submissions, mean {sum(totals.values()) / len(students):.2f} / {maximum:g} points"]
    for name in exercises:
        rows = [r for r in results if r.exercise == name]
        counts = {status: sum(r.status == status for r in rows) for status in STATUSES}
        lines.append(f"  {name:28s} " + "  ".join(f"{s} {n}" for s, n in counts.items() if n))
    flagged = [r for r in results if r.similarity >= FLAG]
    if flagged:
        lines.append(f"similarity ≥ {FLAG:g} (for you to look at; no points changed): {len(flagged)} rows, listed in similarity.md")
        lines += [f"  {r.student} / {r.exercise}: {r.similarity:.2f} like {r.similar_to}" for r in flagged[:10]]
    if box is not None and box.bwrap is None:
        lines.append(f"sandbox: none ({box.why}): students' code could read files on this machine; verdicts are still the judge's")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlib.grade", description="Grade a class's notebooks for one week.")
    parser.add_argument("week", help="a core week, e.g. 01_patching")
    parser.add_argument("submissions", type=Path, help="a folder: one notebook per student (or one folder per student)")
    parser.add_argument("--out", type=Path, default=Path("grades"), help="where grades.csv and feedback/ go (default: grades)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per cell (default: 60)")
    parser.add_argument("--jobs", type=int, default=None, help="submissions graded at once (default: the number of cores)")
    parser.add_argument("--seed", type=int, default=None, help="the grading seed of the judge's own inputs (default: fixed per week)")
    parser.add_argument("--sandbox", choices=["auto", "off"], default="auto", help="run students' kernels in bubblewrap where it works")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or (args.jobs is not None and args.jobs < 1):
        parser.error("--timeout must be > 0 and --jobs ≥ 1")
    use_sandbox = args.sandbox == "auto"
    try:
        results = grade_class(args.week, args.submissions, args.out, args.timeout, args.jobs, progress=not args.no_progress,
                              seed=args.seed, use_sandbox=use_sandbox)  # fmt: skip
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    box = sandbox.find() if use_sandbox else sandbox.Sandbox(None, "turned off with --sandbox off")
    print(_summary(args.week, results, box))
    print(f"wrote {args.out / 'grades.csv'}, {args.out / 'similarity.md'} and {len({r.student for r in results})} feedback files in {args.out / 'feedback'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
