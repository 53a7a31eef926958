"""The judge: grades one submission from a process that never runs a line of the student's code.

    python -m vitlib.judge        # a worker of `python -m vitlib.grade`: one JSON job per line on stdin

For each submission the judge

1. builds the graded notebook: the instructor's setup cells, then each of the student's exercise
   cells (a stub where it is missing) followed by a probe cell (`vitlib.probe.answer`);
2. runs it with nbval (`pytest --nbval-lax`) in a fresh kernel, inside the OS sandbox where there
   is one (`vitlib.sandbox`), with a copy of vitlib from which the week's answers are withheld
   (`vitlib.withheld`);
3. when a probe calls in, runs the instructor's check cell and the hidden test of that exercise
   here, on a `Remote` stand-in for the student's object (`vitlib.remote`): each use of it is a
   request to the kernel, and only data comes back. The check runs twice: on the notebook's own
   inputs (its message is the feedback, word for word what the student's notebook says) and on
   inputs drawn from the grading seed (so that answers looked up for the visible inputs fail);
4. keeps its own clock: an exercise cell or a call that runs over the limit is a timeout, a
   kernel that dies is an error, and the run starts again without that exercise.

Nothing the kernel writes (its outputs, pytest's report, files) is read for a verdict.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from vitlib import sandbox as sandboxes
from vitlib import withheld
from vitlib.notebooks import ROOT, stub_source

__all__ = ["Exercise", "Week", "load_exercises", "Job", "judge_submission", "secrets_of", "main"]

MAX_STUDENT_TEXT = 300  # characters of a student's own exception text shown in feedback
MAX_MESSAGE_CHARS = 1500


@dataclass
class Exercise:
    """One exercise of the instructor's notebook."""

    name: str  # from the cell id ex-NAME
    points: float
    source: str  # the instructor's solution cell
    check_source: str
    defines: str | None  # the name the check is called with, e.g. "PatchEmbedding"


@dataclass
class Week:
    name: str
    notebook: NotebookNode
    exercises: list[Exercise]
    hidden_source: str | None
    hidden_functions: set[str] = field(default_factory=set)


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


def load_exercises(week: str, solutions: Path = ROOT / "solutions", hidden: Path = ROOT / "tests" / "hidden") -> Week:
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
    return Week(week, nb, exercises, hidden_source, functions)


def secrets_of(hidden_source: str | None) -> list[str]:
    """Text of the hidden tests that must never reach a student: every line of 16+ characters, names and strings."""
    if not hidden_source:
        return []
    found = [line.strip() for line in hidden_source.splitlines() if len(line.strip()) >= 16]
    for node in ast.walk(ast.parse(hidden_source)):
        if isinstance(node, ast.FunctionDef):
            found.append(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) >= 8:
            found += [line.strip() for line in node.value.splitlines() if len(line.strip()) >= 8]
    return sorted(set(found))


# --- the graded notebook ------------------------------------------------------------------------------

_READY = "# vitlib.grade: the setup ran; the judge's clock starts\nimport vitlib.probe\nvitlib.probe.ready()"
_PROBE = "# vitlib.grade: the judge calls your code from its own process\nimport vitlib.probe\nvitlib.probe.answer({name!r}, {defines!r}, globals())"


def graded_notebook(week: Week, sources: dict[str, str], stubbed: set[str]) -> NotebookNode:
    """Setup cells, then per exercise the student's cell (or the stub) and a probe cell; no stored outputs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(week.notebook.metadata.get("kernelspec", {"name": "python3"}))}
    for cell in week.notebook.cells:
        if cell.cell_type == "code" and "setup" in cell.metadata.get("tags", []):
            nb.cells.append(nbformat.v4.new_code_cell(cell.source))
    nb.cells.append(nbformat.v4.new_code_cell(_READY))
    for exercise in week.exercises:
        source = stub_source(exercise.source) if exercise.name in stubbed else sources[exercise.name]
        nb.cells.append(nbformat.v4.new_code_cell(source))
        nb.cells.append(nbformat.v4.new_code_cell(_PROBE.format(name=exercise.name, defines=exercise.defines)))
    return nb


# --- one submission -----------------------------------------------------------------------------------


@dataclass
class Job:
    """What the grader asks of the judge for one student."""

    week: str
    student: str
    sources: dict[str, str]  # exercise -> the student's cell (missing exercises are absent)
    timeout: float = 60.0
    seed: int = 1
    sandbox: bool = True
    hide: list[str] = field(default_factory=list)
    solutions: str = str(ROOT / "solutions")
    hidden: str = str(ROOT / "tests" / "hidden")


@dataclass
class Verdict:
    exercise: str
    status: str
    message: str = ""
    hidden: bool = False
    passed_names: list[str] = field(default_factory=list)


class _Clock:
    """The judge's own time limit on each exercise cell."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def restart(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _clip(text: str, limit: int = MAX_STUDENT_TEXT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _redact(message: str, secrets: list[str]) -> str:
    """The message, unless it quotes the hidden tests."""
    if any(s in message for s in secrets):
        return "(the message is not shown: it quotes the grader's hidden tests)"
    return message[:MAX_MESSAGE_CHARS]


class Judge:
    """Judges the exercises of one submission as their probes call in."""

    def __init__(self, week: Week, job: Job) -> None:
        import vitlib
        import vitlib.checks

        self.week, self.job = week, job
        self.secrets = secrets_of(week.hidden_source)
        self.verdicts: dict[str, Verdict] = {}
        self.hidden_namespace: dict[str, Any] = {}
        if week.hidden_source:
            exec(compile(week.hidden_source, f"tests/hidden/{week.name}.py", "exec"), self.hidden_namespace)
        self.namespace: dict[str, Any] = {"vitlib": vitlib, "checks": vitlib.checks}
        for module in sorted(set(re.findall(r"checks\.(\w+)\.check_", "".join(e.check_source for e in week.exercises)))):
            __import__(f"vitlib.checks.{module}")

    def _run_check(self, exercise: Exercise, target: Any, offset: int) -> None:
        import torch

        import vitlib.checks as checks

        checks._SEED_OFFSET = offset
        torch.manual_seed(offset)
        try:  # a check here raises, wherever the judge runs (it never only reports, as in a notebook)
            with contextlib.redirect_stdout(io.StringIO()), checks.reporting(False):
                exec(compile(exercise.check_source, f"check-{exercise.name}", "exec"), {**self.namespace, exercise.defines: target})
        finally:
            checks._SEED_OFFSET = 0

    def judge(self, exercise: Exercise, hello: dict, link) -> Verdict:
        """The verdict on one exercise; KernelLost goes up (the run is over)."""
        from vitlib.checks import _PASSED, CheckFailed, reporting, reset
        from vitlib.remote import JudgeCannotSend, UsesReference

        name = exercise.name
        error = hello.get("error") if isinstance(hello.get("error"), str) else None
        if error is not None or not hello.get("defined") or not isinstance(hello.get("target"), dict):
            return self._cell_verdict(exercise, error)
        target = link.remote(hello["target"])
        reset()  # which checks pass is this exercise's news only
        try:
            try:
                self._run_check(exercise, target, 0)
            except NotImplementedError:
                return Verdict(name, "failed", "not written yet")
            except (CheckFailed, AssertionError) as failure:
                return Verdict(name, "failed", _redact(f"CheckFailed: {failure}", self.secrets))
            passed_names = sorted(_PASSED)
            hidden = self.hidden_namespace.get(f"hidden_{name}")
            try:
                if hidden is not None:
                    with contextlib.redirect_stdout(io.StringIO()), reporting(False):
                        hidden(target)
            except Exception:
                return Verdict(name, "failed", "passed its check, but failed a hidden test", hidden=True, passed_names=passed_names)
            try:
                self._run_check(exercise, target, self.job.seed)
            except Exception:
                message = "passed its check, but not on the grader's own inputs: does it depend on the exact inputs of the check?"
                return Verdict(name, "failed", message, hidden=True, passed_names=passed_names)
            return Verdict(name, "passed", passed_names=passed_names)
        except UsesReference:
            return Verdict(name, "uses_reference", self._reference_message(exercise))
        except JudgeCannotSend as fault:
            return Verdict(name, "error", f"the grader could not run this check remotely ({fault}): please tell the course's maintainers")
        except Exception as error:  # the check could not work with what came back
            return Verdict(name, "error", _redact(f"{type(error).__name__}: {_clip(str(error))}", self.secrets))

    def _reference_message(self, exercise: Exercise) -> str:
        names = ", ".join(n.replace(":", ".") for n in withheld.WITHHELD.get(self.week.name, {}).get(exercise.name, []))
        return f"your {exercise.defines or exercise.name} calls vitlib's own answer ({names or 'withheld'}), which earns no points: write it yourself"

    def _cell_verdict(self, exercise: Exercise, error: str | None) -> Verdict:
        if error is None:
            return Verdict(exercise.name, "error", f"the exercise cell does not define {exercise.defines}")
        if error.startswith("ReferenceWithheld"):
            return Verdict(exercise.name, "uses_reference", self._reference_message(exercise))
        if error.startswith("NotImplementedError"):
            return Verdict(exercise.name, "failed", "not written yet (the exercise cell still raises NotImplementedError)")
        return Verdict(exercise.name, "error", _redact(f"the exercise cell raised {_clip(error)}", self.secrets))


def _kernel_env(lib: Path, scratch: Path, socket_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VITLIB_", "PYTEST_"))}
    env.update(
        PYTHONPATH=str(lib), VITLIB_JUDGE_SOCKET=str(socket_path), PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg",
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        JUPYTER_RUNTIME_DIR=str(scratch / ".jupyter"), IPYTHONDIR=str(scratch / ".ipython"), MPLCONFIGDIR=str(scratch / ".mpl"),
    )  # fmt: skip
    return env


# nbformat imports jsonschema, which imports rfc3987_syntax for the "iri" format (no notebook schema uses it), and
# that package compiles a Lark grammar at import: 1.1 s of every start (jsonschema issue #1428). The judge's workers
# and the graded kernels' pytest start without it. The kernel's pytest also loads nbval and no other plugin
# (PYTEST_DISABLE_PLUGIN_AUTOLOAD in `_kernel_env`): together 1.5 of the 7 s a kernel took to be ready.
WITHOUT_RFC3987 = "import sys; sys.modules['rfc3987_syntax'] = None; "
_PYTEST = WITHOUT_RFC3987 + "import pytest; sys.exit(pytest.main(sys.argv[1:]))"


def _start_kernel(job: Job, nb: NotebookNode, workdir: Path, channel: Path) -> subprocess.Popen:
    """pytest --nbval-lax on the graded notebook, in the sandbox, with a fresh stripped vitlib of its own."""
    scratch = workdir / "scratch"
    scratch.mkdir(parents=True)
    lib = withheld.strip_vitlib(workdir / "lib", job.week)
    path = scratch / "graded.ipynb"
    nbformat.write(nb, path)
    (scratch / "pytest.ini").write_text("[pytest]\n")
    command = [
        sys.executable, "-c", _PYTEST, "-q", "-p", "no:cacheprovider", "-p", "nbval", "-c", str(scratch / "pytest.ini"),
        "--rootdir", str(scratch), "--nbval-lax", "--nbval-current-env",
        f"--nbval-cell-timeout={job.timeout * 20 + 60:g}", str(path),
    ]  # fmt: skip
    box = sandboxes.find() if job.sandbox else sandboxes.Sandbox(None, "off")
    command = box.wrap(command, scratch=scratch, channel=channel, lib=lib, hide=[Path(p) for p in job.hide])
    return subprocess.Popen(
        command, cwd=scratch, env=_kernel_env(lib, scratch, channel / "s"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    """End the run: pytest, its kernel and whatever they started (the sandbox's PID namespace, or the process tree)."""
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        family = []
    for p in [*family]:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class _Run:
    """One nbval run of the graded notebook: its kernel, the judge's socket, and the probes as they call in."""

    def __init__(self, judge: Judge, job: Job, nb: NotebookNode, workdir: Path, channel: Path) -> None:
        self.judge, self.job, self.order = judge, job, list(judge.week.exercises)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(channel / "s"))
        self.server.listen(4)
        self.process = _start_kernel(job, nb, workdir, channel)
        self.clock, self.lifeline = _Clock(), None

    def close(self) -> None:
        _stop(self.process)
        self.server.close()
        if self.lifeline is not None:
            self.lifeline.close()

    def accept(self, limit: float) -> socket.socket | str:
        """The next connection, or why none came: "died" (the kernel is gone) or "timeout"."""
        watched = [self.server] + ([self.lifeline] if self.lifeline else [])
        while True:
            readable, _, _ = select.select(watched, [], [], 0.2)
            if self.server in readable:
                conn, _ = self.server.accept()
                conn.settimeout(self.job.timeout)
                return conn
            if self.lifeline in readable:
                with contextlib.suppress(OSError):
                    if self.lifeline.recv(1):
                        continue
                return "died"  # the kernel's end of the lifeline closed with it
            if self.process.poll() is not None:
                return "died"
            if self.clock.elapsed() > limit:
                return "timeout"

    def message(self, limit: float) -> tuple[socket.socket, dict] | str:
        """The next connection that sends a message, and the message."""
        from vitlib import wire

        while True:
            conn = self.accept(limit)
            if isinstance(conn, str):
                return conn
            try:
                return conn, wire.receive(conn)[0]
            except (OSError, wire.BadMessage):
                conn.close()  # not a probe: ignore it

    def wait_ready(self) -> bool:
        """Until the setup cells have run (the lifeline connects); False, with every verdict an error, if they fail."""
        limit = self.job.timeout * (len(self.judge.week.notebook.cells) + 2) + 60
        while True:
            got = self.message(limit)
            if isinstance(got, str):
                return self._all_fail("the instructor's setup cells did not finish")
            conn, header = got
            if header.get("ready") is True:
                self.lifeline = conn
                if isinstance(header.get("error"), str):  # before any student code ran: the instructor's setup failed
                    return self._all_fail(f"setup failed: {_clip(header['error'])}")
                self.clock.restart()
                return True
            conn.close()

    def _all_fail(self, message: str) -> bool:
        for e in self.order:
            self.judge.verdicts.setdefault(e.name, Verdict(e.name, "error", message))
        return False

    def probe(self, index: int, stubbed: set[str]) -> tuple[int, socket.socket, dict] | str:
        """The probe of exercise `index` or a later one (the ones skipped never called in: their cells broke them)."""
        while True:
            got = self.message(self.job.timeout)
            if isinstance(got, str):
                return got
            conn, header = got
            hello = header.get("hello") if isinstance(header.get("hello"), dict) else {}
            later = [i for i in range(index, len(self.order)) if self.order[i].name == hello.get("exercise")]
            if later:
                for skipped in self.order[index : later[0]]:
                    if skipped.name not in stubbed:
                        self.judge.verdicts.setdefault(skipped.name, Verdict(skipped.name, "error", _NO_PROBE))
                return later[0], conn, hello
            conn.close()  # a connection that is not a probe the judge waits for

    def serve(self, exercise: Exercise, conn: socket.socket, hello: dict, stubbed: set[str]) -> bool:
        """Judge `exercise` (unless already judged, or a stub), then tell the kernel; False if the kernel was lost."""
        from vitlib import wire
        from vitlib.remote import KernelLost, Link

        verdicts = self.judge.verdicts
        with conn:
            try:
                if exercise.name not in verdicts and exercise.name not in stubbed:
                    verdicts[exercise.name] = self.judge.judge(exercise, hello, Link(conn, self.job.timeout))
            except KernelLost as lost:
                verdicts[exercise.name] = _lost_verdict(exercise, lost.reason, self.job.timeout, "call")
                return False
            verdict = verdicts.get(exercise.name)
            passed = verdict.passed_names if verdict is not None and verdict.status in ("passed", "failed") else []
            reveal = withheld.reveal_sources(self.judge.week.name, exercise.name)
            with contextlib.suppress(OSError):
                wire.send(conn, {"op": "done", "passed": passed, "reveal": reveal})
        self.clock.restart()
        return True


def _run_once(judge: Judge, job: Job, sources: dict[str, str], stubbed: set[str], workdir: Path) -> str | None:
    """One nbval run; fills judge.verdicts; returns the exercise that hung or crashed (to stub next time)."""
    order = judge.week.exercises
    with tempfile.TemporaryDirectory(prefix="vj") as channel:  # a short path: a socket's allows ~100 bytes
        run = _Run(judge, job, graded_notebook(judge.week, sources, stubbed), workdir, Path(channel))
        try:
            if not run.wait_ready():
                return None
            index = 0
            while index < len(order):
                got = run.probe(index, stubbed)
                if isinstance(got, str):  # the kernel died or hung in the exercise cell
                    judge.verdicts.setdefault(order[index].name, _lost_verdict(order[index], got, job.timeout, "cell"))
                    return order[index].name
                index, conn, hello = got
                if not run.serve(order[index], conn, hello, stubbed):
                    return order[index].name
                index += 1
            return None
        finally:
            run.close()


_NO_PROBE = (
    "the grader's probe after this exercise cell could not reach the judge: does the cell change Python's builtins, "
    "the socket module or vitlib.probe?"
)


def _lost_verdict(exercise: Exercise, reason: str, timeout: float, where: str) -> Verdict:
    if reason == "timeout":
        who = "your exercise cell" if where == "cell" else "your code, called by the check,"
        return Verdict(exercise.name, "timeout", f"{who} ran longer than the {timeout:g} s limit: an infinite loop?")
    return Verdict(
        exercise.name, "error",
        "the kernel died while running this exercise: a crash, os._exit, running out of memory, or a loop that ignores interrupts?",
    )  # fmt: skip


def judge_submission(job: Job) -> list[Verdict]:
    """Grade one student's exercises; missing ones (not in job.sources) get no verdict here."""
    week = load_exercises(job.week, Path(job.solutions), Path(job.hidden))
    judge = Judge(week, job)
    sources = dict(job.sources)
    stubbed = {e.name for e in week.exercises if e.name not in sources}
    with tempfile.TemporaryDirectory(prefix="vitlib-judge-") as tmp:
        for attempt in range(len(week.exercises) + 1):
            broken = _run_once(judge, job, sources, stubbed, Path(tmp) / f"run{attempt}")
            if broken is None or all(e.name in judge.verdicts or e.name in stubbed for e in week.exercises):
                break
            stubbed.add(broken)
    for exercise in week.exercises:
        if exercise.name in sources:
            judge.verdicts.setdefault(exercise.name, Verdict(exercise.name, "error", "the grading run stopped before this exercise"))
    return [judge.verdicts[e.name] for e in week.exercises if e.name in judge.verdicts]


def main() -> int:
    """A worker: one JSON job per line on stdin, one JSON line of verdicts per job on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing printed along the way may mix with the answers
    for line in sys.stdin:
        if not line.strip():
            continue
        job = Job(**json.loads(line))
        try:
            verdicts = [vars(v) for v in judge_submission(job)]
            answer = {"student": job.student, "verdicts": verdicts}
        except Exception as error:  # a fault of the grader, not of the student
            answer = {"student": job.student, "fault": f"{type(error).__name__}: {error}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
