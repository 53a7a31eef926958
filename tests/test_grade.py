"""`vitlib.grade` on a synthetic class: submissions built from the solution and the student notebook.

Each student below is the week-01 solution (or the stub notebook) with one thing done to it: a
plausible mistake, a faked check, a hang, a crash, a file that is not a notebook, ... and the
grade every exercise must get is written next to it. The whole class is graded in ONE
`grade_class` call (a kernel start costs seconds), shared by the tests of this file.
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hidden_text import hidden_text
from vitlib import checks, grade
from vitlib.notebooks import ROOT

WEEK = "01_patching"
SOLUTION = ROOT / "solutions" / f"{WEEK}.ipynb"
STUB = ROOT / "weeks" / f"{WEEK}.ipynb"
HIDDEN = ROOT / "tests" / "hidden" / f"{WEEK}.py"
EXERCISES = ["patchify", "num_patches", "patch_embedding", "add_class_token_and_positions"]
TIMEOUT = 20  # seconds per cell: room for the setup cell's imports on a busy machine
HEADER = ["student", "week", "exercise", "points", "max_points", "status", "message", "similarity", "similar_to"]
STRAY = "written_by_a_student.txt"  # the file `writes_files` writes into its working folder
FOLDERS = {"folder_student", "empty_folder"}  # submitted as a folder, with or without the notebook

# Plausible wrong answers, and the words of the check's hint that must reach the feedback.
WRONG = {
    "patchify": (
        "def patchify(images, patch_size):\n"
        '    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch_size, p2=patch_size)\n'
    ),
    "num_patches": (
        "def num_patches(image_size, patch_size):\n"
        "    if image_size % patch_size:\n"
        "        raise ValueError('the patches do not fit')\n"
        "    return image_size // patch_size\n"
    ),
    "patch_embedding": (
        'patchify_to_use = checks.mine_or_reference("patchify", patchify, vitlib.patching.patchify)\n\n\n'
        "class PatchEmbedding(nn.Module):\n"
        "    def __init__(self, patch_size, in_channels, hidden_dim):\n"
        "        super().__init__()\n"
        "        self.patch_size = patch_size\n"
        "        self.linear = nn.Linear(patch_size * patch_size * in_channels, hidden_dim)\n\n"
        "    def forward(self, images):\n"
        "        return self.linear(patchify_to_use(images, self.patch_size))\n"
    ),
    "add_class_token_and_positions": (
        "def add_class_token_and_positions(x, class_token, pos_embedding):\n"
        "    return torch.cat([x, class_token.expand(x.shape[0], -1, -1)], dim=1) + pos_embedding\n"
    ),
}
HINTS = {
    "patchify": "channel-first flattening (c p1 p2)",
    "num_patches": "the number of patches along ONE side",
    "patch_embedding": "no attribute proj",
    "add_class_token_and_positions": "the class token is at the end",
}
FAKE_PASS = 'print("✓ patchify: matches vitlib on 5 seeded inputs")'


# --- building submissions -------------------------------------------------------------------------


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _index(nb: dict, cell_id: str) -> int:
    return next(i for i, cell in enumerate(nb["cells"]) if cell.get("id") == cell_id)


def _cell(nb: dict, cell_id: str) -> dict:
    return nb["cells"][_index(nb, cell_id)]


def _source(nb: dict, cell_id: str) -> str:
    source = _cell(nb, cell_id)["source"]
    return "".join(source) if isinstance(source, list) else source


def _edited(nb: dict, **sources: str) -> dict:
    """A copy of `nb` with the exercise cells ex-NAME holding the given sources."""
    nb = copy.deepcopy(nb)
    for name, source in sources.items():
        _cell(nb, f"ex-{name}")["source"] = source
    return nb


def _code_cell(source: str, cell_id: str | None) -> dict:
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
    if cell_id is not None:
        cell["id"] = cell_id
    return cell


@functools.cache
def _build_class() -> dict[str, tuple[dict | bytes | None, dict[str, str]]]:
    """Student -> (their notebook, or raw bytes, or None for a folder without one; the expected statuses)."""
    solution, stub = _load(SOLUTION), _load(STUB)
    right = {name: _source(solution, f"ex-{name}") for name in EXERCISES}

    def expect(default: str, **statuses: str) -> dict[str, str]:
        return {name: statuses.get(name, default) for name in EXERCISES}

    students: dict[str, tuple[dict | bytes | None, dict[str, str]]] = {
        "complete": (solution, expect("passed")),
        "empty": (stub, expect("failed")),
    }
    for name in EXERCISES:
        students[f"broken_{name}"] = (_edited(solution, **{name: WRONG[name]}), expect("passed", **{name: "failed"}))

    # The student rewrote the check cell into a fake ✓ (and faked another check's stored output).
    nb = _edited(solution, patchify=WRONG["patchify"])
    _cell(nb, "check-patchify").update(source=FAKE_PASS, outputs=[{"name": "stdout", "output_type": "stream", "text": FAKE_PASS[7:-2] + "\n"}])
    _cell(nb, "check-num_patches")["outputs"] = [{"name": "stdout", "output_type": "stream", "text": "✓ whatever I like\n"}]
    students["tampered_check"] = (nb, expect("passed", patchify="failed"))

    nb = _edited(solution, num_patches=WRONG["num_patches"])
    _cell(nb, "check-num_patches").update(outputs=[], execution_count=None)
    students["tampered_output"] = (nb, expect("passed", num_patches="failed"))

    # Monkeypatching the check, the checks package, and the reference the check compares with.
    cheat = (
        WRONG["patchify"] + "\n\nimport types\nimport vitlib.checks.patching as m\n"
        f"m.check_patchify = lambda f: {FAKE_PASS}\n"
        f"vitlib.checks.patching = types.SimpleNamespace(check_patchify=lambda f: {FAKE_PASS})\n"
        "vitlib.patching.patchify = patchify\n"
    )
    students["monkeypatch"] = (_edited(solution, patchify=cheat), expect("passed", patchify="failed"))

    hang = "import time\n\n\ndef patchify(images, patch_size):\n    while True:  # an infinite loop\n        time.sleep(0.05)\n"
    students["infinite_loop"] = (_edited(solution, patchify=hang), expect("passed", patchify="timeout"))
    crash = "import os\n\nos._exit(1)\n\n" + right["num_patches"]
    students["crash"] = (_edited(solution, num_patches=crash), expect("passed", num_patches="error"))

    # 20 MB printed, and stored in the notebook as Jupyter would: graded like any other.
    nb = _edited(solution, patchify='print("x" * 20_000_000)\n\n' + right["patchify"])
    _cell(nb, "ex-patchify").update(execution_count=3, outputs=[{"name": "stdout", "output_type": "stream", "text": "x" * 20_000_000 + "\n"}])
    students["huge_output"] = (nb, expect("passed"))

    nb = copy.deepcopy(solution)
    del nb["cells"][_index(nb, "ex-patchify")]
    students["missing_cell"] = (nb, expect("passed", patchify="missing"))

    # A wrong copy under another id before the real cell; and two cells with the same id, the last one right.
    nb = copy.deepcopy(solution)
    nb["cells"].insert(_index(nb, "ex-patchify"), _code_cell(WRONG["patchify"], "copy-of-patchify"))
    nb["cells"].insert(_index(nb, "ex-num_patches"), _code_cell(WRONG["num_patches"], "ex-num_patches"))
    students["duplicated_cell"] = (nb, expect("passed"))

    nb = copy.deepcopy(solution)
    nb["cells"].reverse()
    students["reordered"] = (nb, expect("passed"))

    nb = copy.deepcopy(solution)
    at = _index(nb, "ex-patchify")
    nb["cells"][at] = _code_cell("# my own version\n" + right["patchify"], None)  # no id at all
    students["retyped"] = (nb, expect("passed"))

    nb = _edited(solution, num_patches="import does_not_exist\n\n" + right["num_patches"])
    students["bad_import"] = (nb, expect("passed", num_patches="error"))

    writes = f'import os\n\nwith open("{STRAY}", "w") as f:\n    f.write("hello")\nos.chdir("/")\n\n' + right["num_patches"]
    students["writes_files"] = (_edited(solution, num_patches=writes), expect("passed"))

    # Passes its check (float32 in, float32 out) but not the hidden test (half in, float32 out).
    leaky = right["patchify"].replace("patch_size)\n", "patch_size).float()\n")
    assert leaky != right["patchify"]
    students["hidden_fail"] = (_edited(solution, patchify=leaky), expect("passed", patchify="failed"))

    # Right code that prints and warns along the way: the check still passes.
    chatty = (
        "import warnings\n\n\ndef patchify(images, patch_size):\n"
        '    print("debug:", tuple(images.shape))\n'
        '    warnings.warn("just a warning from my code")\n'
        '    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)\n'
    )
    students["debug_prints"] = (_edited(solution, patchify=chatty), expect("passed"))

    # In the student's notebook, their PatchEmbedding uses their own patchify once it passed: so in grading.
    own = right["patch_embedding"].replace(
        "\n\n\nclass", '\nassert patchify_to_use is patchify, "the fallback ignored my passing patchify"\n\n\nclass', 1
    )
    assert own != right["patch_embedding"]
    students["uses_own_patchify"] = (_edited(solution, patch_embedding=own), expect("passed"))

    # A later cell that would quote the hidden tests in its error, were they in the kernel already.
    thief = 'raise RuntimeError([v.__code__.co_consts for k, v in dict(globals()).items() if k.startswith("hidden")])\n'
    students["steals_hidden"] = (_edited(solution, add_class_token_and_positions=thief), expect("passed", add_class_token_and_positions="error"))

    students["not_json"] = (b'{"cells": [{"cell_type": "code", "source": "oops"', expect("error"))
    students["not_a_notebook"] = (b'{"hello": 1}\n', expect("error"))
    students["binary_file"] = (bytes([0xFF, 0xFE, 0x00]) + random.Random(0).randbytes(4000), expect("error"))
    students["folder_student"] = (solution, expect("passed"))
    students["empty_folder"] = (None, expect("error"))
    return students


def _write_class(folder: Path, students: dict) -> None:
    for student, (content, _) in students.items():
        if student in FOLDERS:
            (folder / student).mkdir()
            if content is not None:
                (folder / student / f"{WEEK}.ipynb").write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        elif isinstance(content, bytes):
            (folder / f"{student}.ipynb").write_bytes(content)
        else:
            (folder / f"{student}.ipynb").write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    # Not submissions: Jupyter's checkpoints, and a stray file that is not a notebook.
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "complete-checkpoint.ipynb").write_bytes((folder / "complete.ipynb").read_bytes())
    (folder / "README.txt").write_text("the class of week 01\n", encoding="utf-8")


def _snapshot(folder: Path) -> dict[str, tuple[str, int] | None]:
    """Every path under `folder` -> (sha256, mtime in ns) for files, None for folders."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("grade")
    submissions, out = root / "submissions", root / "out"
    submissions.mkdir()
    students = _build_class()
    _write_class(submissions, students)
    before, cwd = _snapshot(submissions), Path.cwd()
    results = grade.grade_class(WEEK, submissions, out, timeout=TIMEOUT, jobs=2, progress=False)
    return {
        "students": students,
        "results": {(r.student, r.exercise): r for r in results},
        "order": [(r.student, r.exercise) for r in results],
        "submissions": submissions,
        "out": out,
        "before": before,
        "after": _snapshot(submissions),
        "cwd": (cwd, Path.cwd()),
    }


# --- the grades ------------------------------------------------------------------------------------


@pytest.mark.parametrize("student", list(_build_class()))
def test_every_exercise_gets_exactly_the_expected_grade(graded, student):
    expected = graded["students"][student][1]
    got = {name: (graded["results"][student, name].status, graded["results"][student, name].points) for name in EXERCISES}
    want = {name: (status, 1.0 if status == "passed" else 0.0) for name, status in expected.items()}
    messages = {name: graded["results"][student, name].message for name in EXERCISES}
    assert got == want, messages


def test_only_notebooks_and_student_folders_are_submissions(graded):
    assert {student for student, _ in graded["results"]} == set(graded["students"])  # no README, no .ipynb_checkpoints
    assert graded["order"] == [(s, e) for s in sorted(graded["students"]) for e in EXERCISES]


def test_messages_say_what_went_wrong(graded):
    message = {key: r.message for key, r in graded["results"].items()}
    for name in EXERCISES:
        text = message[f"broken_{name}", name]
        assert text.startswith("CheckFailed: ✗") and "expected:" in text and HINTS[name] in text, text
    assert all(message["empty", name].startswith("not written yet") for name in EXERCISES)
    assert HINTS["patchify"] in message["tampered_check", "patchify"]
    assert HINTS["num_patches"] in message["tampered_output", "num_patches"]
    assert HINTS["patchify"] in message["monkeypatch", "patchify"]
    assert f"{TIMEOUT} s limit" in message["infinite_loop", "patchify"]
    assert "kernel died" in message["crash", "num_patches"]
    assert "ModuleNotFoundError" in message["bad_import", "num_patches"] and "does_not_exist" in message["bad_import", "num_patches"]
    assert "no cell ex-patchify" in message["missing_cell", "patchify"]
    assert message["hidden_fail", "patchify"] == "passed its check, but failed a hidden test"
    assert graded["results"]["hidden_fail", "patchify"].hidden
    assert "not valid JSON" in message["not_json", "patchify"] or "not a valid notebook" in message["not_json", "patchify"]
    assert "not a notebook" in message["not_a_notebook", "patchify"]
    assert "not a notebook" in message["binary_file", "patchify"]
    assert "no notebook" in message["empty_folder", "patchify"]
    assert all(r.message == "" for r in graded["results"].values() if r.status == "passed")


def test_grades_csv_has_one_row_per_student_and_exercise(graded):
    with open(graded["out"] / "grades.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == HEADER
    assert [(row[0], row[2]) for row in rows[1:]] == graded["order"]
    for student, week, exercise, points, max_points, status, message, similarity, _ in rows[1:]:
        r = graded["results"][student, exercise]
        assert (week, points, max_points, status, message) == (WEEK, f"{r.points:g}", "1", r.status, r.message)
        assert 0 <= float(similarity) <= 1


def test_feedback_per_student_reveals_no_hidden_test(graded):
    feedback = graded["out"] / "feedback"
    assert sorted(p.name for p in feedback.iterdir()) == sorted(f"{s}.md" for s in graded["students"])
    texts = {p.stem: p.read_text(encoding="utf-8") for p in feedback.iterdir()}
    assert "**4 / 4 points**" in texts["complete"] and "**0 / 4 points**" in texts["empty"]
    assert "**3 / 4 points**" in texts["hidden_fail"] and "failed a hidden test" in texts["hidden_fail"]
    secrets = hidden_text(HIDDEN)
    assert "patchify must keep the dtype" in secrets and "hidden_patchify" in secrets
    assert graded["results"]["steals_hidden", "add_class_token_and_positions"].message == "the exercise cell raised RuntimeError: []"
    csv_text = (graded["out"] / "grades.csv").read_text(encoding="utf-8")
    for name, text in [*texts.items(), ("grades.csv", csv_text)]:
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{name} reveals the hidden tests: {leaked}"


def test_submissions_are_only_read(graded):
    assert graded["after"] == graded["before"]  # same files, same bytes, same mtimes, nothing added
    cwd_before, cwd_after = graded["cwd"]
    assert cwd_after == cwd_before
    for folder in (graded["submissions"], graded["out"], ROOT, cwd_before):
        assert not list(folder.rglob(STRAY)), folder


# --- the command line, and the same grade every time -----------------------------------------------


def test_cli_grades_a_folder_and_gives_the_same_grades_again(graded, tmp_path):
    folder = tmp_path / "submissions"
    folder.mkdir()
    for student in ("complete", "broken_patchify"):
        (folder / f"{student}.ipynb").write_bytes((graded["submissions"] / f"{student}.ipynb").read_bytes())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "vitlib.grade", WEEK, str(folder), "--out", str(tmp_path / "out"),
               "--timeout", str(TIMEOUT), "--jobs", "2", "--no-progress"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{WEEK}: 2 submissions, mean 3.50 / 4 points"), result.stdout
    assert "patchify                     passed 1  failed 1" in result.stdout
    assert "wrote" in result.stdout and "2 feedback files" in result.stdout
    with open(tmp_path / "out" / "grades.csv", encoding="utf-8", newline="") as f:
        again = list(csv.DictReader(f))
    assert len(again) == 2 * len(EXERCISES)
    for row in again:  # graded a second time, in another process: the very same grade and message
        r = graded["results"][row["student"], row["exercise"]]
        assert (row["status"], float(row["points"]), row["message"]) == (r.status, r.points, r.message)
    for student in ("complete", "broken_patchify"):
        feedback = f"feedback/{student}.md"
        assert (tmp_path / "out" / feedback).read_bytes() == (graded["out"] / feedback).read_bytes()


def test_unknown_week_is_a_one_line_error(tmp_path, capsys):
    assert grade.main(["99_nothing", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: no week '99_nothing'")
    assert all(p.stem in err for p in (ROOT / "solutions").glob("*.ipynb"))


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        grade.main([WEEK, str(tmp_path), "--timeout", "0"])
    assert exit_.value.code == 2
    assert grade.main([WEEK, str(tmp_path / "nope")]) == 2
    assert "not a folder of submissions" in capsys.readouterr().err
    assert grade.main([WEEK, str(tmp_path)]) == 2  # an empty folder
    assert "no submissions" in capsys.readouterr().err


# --- the student's own check says the same -----------------------------------------------------------


def _checks_in_process(nb: dict) -> dict[str, str]:
    """Run the setup, then each of the student's exercise cells and the instructor's check, here."""
    solution = _load(SOLUTION)
    namespace: dict = {}
    exec(_source(solution, "setup"), namespace)
    verdicts = {}
    for name in EXERCISES:
        exec(_source(nb, f"ex-{name}"), namespace)
        try:
            exec(_source(solution, f"check-{name}"), namespace)
            verdicts[name] = "passed"
        except (checks.CheckFailed, NotImplementedError):
            verdicts[name] = "failed"
    return verdicts


@pytest.mark.parametrize("student", ["complete", *(f"broken_{name}" for name in EXERCISES)])
def test_the_students_own_check_agrees_with_the_grader(graded, student, capsys):
    in_process = _checks_in_process(graded["students"][student][0])
    assert in_process == {name: graded["results"][student, name].status for name in EXERCISES}


# --- reading a submission ----------------------------------------------------------------------------


def test_a_notebook_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.ipynb"
    path.write_bytes(SOLUTION.read_bytes())
    monkeypatch.setattr(grade, "MAX_NOTEBOOK_BYTES", 1000)
    cells, problem = grade._read_submission(path)
    assert cells == [] and "over the" in problem and "limit" in problem


def test_cells_are_found_by_id_the_last_of_several_else_by_the_name_they_define(tmp_path):
    week = grade.load_exercises(WEEK)
    patchify = next(e for e in week.exercises if e.name == "patchify")
    path = tmp_path / "s.ipynb"

    def found(*cells: dict) -> str | None:
        path.write_text(json.dumps({"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
        read, problem = grade._read_submission(path)
        assert problem is None
        return grade._student_source(read, patchify)

    assert found(_code_cell("def patchify(): 1", "ex-patchify"), _code_cell("def patchify(): 2", "ex-patchify")) == "def patchify(): 2"
    assert found(_code_cell("def patchify(): 1", "ex-patchify"), _code_cell("def patchify(): 2", "other")) == "def patchify(): 1"
    assert found(_code_cell("def patchify(): 1", None), _code_cell(["def patch", "ify(): 2"], None)) == "def patchify(): 2"
    assert found(_code_cell("x = 1", None)) is None
    assert found({"cell_type": "markdown", "id": "ex-patchify", "source": "def patchify(): 1", "metadata": {}}) is None
    assert found({"cell_type": "code", "id": "ex-patchify", "source": 42}) == ""  # garbage in a cell: graded, not a crash
