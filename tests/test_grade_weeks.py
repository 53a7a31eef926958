"""Every week grades through the judge: its solution gets full marks, its student notebook as shipped gets 0.

The judge runs the checks in its own process on stand-ins for the student's objects
(`vitlib.remote`); these tests are what shows that each week's checks work that way as they
do in the notebook: a model or an optimizer handed to the student's code, gradients,
parameters frozen, an exception with a status, a layer added to a model.
"""

from __future__ import annotations

import shutil

import pytest

from vitlib import grade, withheld
from vitlib.notebooks import ROOT

WEEKS = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))


def test_every_week_withholds_an_answer_for_each_exercise():
    for week in WEEKS:
        exercises = [e.name for e in grade.load_exercises(week).exercises]
        assert list(withheld.WITHHELD[week]) == exercises, week
        for module, names in withheld.references(week).items():
            for name in names:
                assert withheld.reference_source(module, name).lstrip().startswith(("def ", "class ", "@")), (module, name)


@pytest.mark.parametrize("week", WEEKS)
def test_the_solution_passes_and_the_stub_fails(tmp_path, week):
    folder = tmp_path / "submissions"
    folder.mkdir()
    shutil.copy(ROOT / "solutions" / f"{week}.ipynb", folder / "complete.ipynb")
    shutil.copy(ROOT / "weeks" / f"{week}.ipynb", folder / "empty.ipynb")
    results = grade.grade_class(week, folder, tmp_path / "out", timeout=60, jobs=2, progress=False)
    complete = {r.exercise: (r.status, r.message) for r in results if r.student == "complete"}
    empty = {r.exercise: r.status for r in results if r.student == "empty"}
    assert complete == {name: ("passed", "") for name in complete}
    assert empty == {name: "failed" for name in empty}
    assert all(r.message.startswith("not written yet") for r in results if r.student == "empty")


# --- the grader and the student's notebook agree -------------------------------------------------

_RIGHT_SCORES = "def attention_scores(q, k):\n    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
_UNSCALED_SCORES = "def attention_scores(q, k):\n    return q @ k.transpose(-2, -1)\n"
_NAIVE_SOFTMAX = "def softmax(x, dim=-1):\n    e = x.exp()\n    return e / e.sum(dim, keepdim=True)\n"
_RIGHT_SOFTMAX = "def softmax(x, dim=-1):\n    e = (x - x.amax(dim, keepdim=True)).exp()\n    return e / e.sum(dim, keepdim=True)\n"


def _week02(answers: dict[str, str]):
    """weeks/02_attention.ipynb with some exercise cells written (the others left as shipped, or from the solution)."""
    import nbformat

    nb = nbformat.read(ROOT / "weeks" / "02_attention.ipynb", as_version=4)
    solution = {c.id: c.source for c in nbformat.read(ROOT / "solutions" / "02_attention.ipynb", as_version=4).cells}
    for cell in nb.cells:
        name = cell.id.removeprefix("ex-")
        if cell.id.startswith("ex-") and name in answers:
            cell.source = solution[cell.id] if answers[name] == "solution" else answers[name]
    return nb


def _report_card(nb) -> dict[str, bool]:
    """What the notebook's last cell says of each exercise: passes or not."""
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    text = "".join(o.get("text", "") for o in last.outputs) + "\n".join(line for o in last.outputs for line in o.get("traceback", []))
    said = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("✓ ", "✗ ", "· ")) and not line.startswith("✓ all"):
            said[line[2:].split(":")[0]] = line.startswith("✓")
        elif line.startswith("✓ all"):
            said.update(dict.fromkeys(line.split(": ", 1)[1].split(", "), True))
    return said


def test_the_grader_and_the_report_card_agree_on_every_exercise(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    students = {
        "mixed": {"attention_scores": _RIGHT_SCORES, "softmax": _NAIVE_SOFTMAX},
        "unscaled": {"attention_scores": _UNSCALED_SCORES, "softmax": _RIGHT_SOFTMAX, "attention": "solution"},
        "complete": {"attention_scores": "solution", "softmax": "solution", "attention": "solution"},
        "empty": {},
    }
    folder = tmp_path / "submissions"
    folder.mkdir()
    cards = {}
    for student, answers in students.items():
        nb = _week02(answers)
        nbformat.write(nb, folder / f"{student}.ipynb")
        ran = nbformat.from_dict(nb)
        NotebookClient(ran, timeout=120, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}).execute()
        cards[student] = _report_card(ran)
    results = grade.grade_class("02_attention", folder, tmp_path / "out", timeout=60, jobs=2, progress=False)
    graded = {s: {r.exercise: r.status == "passed" for r in results if r.student == s} for s in students}
    assert cards == graded
    assert graded["mixed"] == {"attention_scores": True, "softmax": False, "attention": False}
    assert graded["unscaled"] == {"attention_scores": False, "softmax": True, "attention": True}  # on vitlib's scores


# --- the mistakes the checks newly catch are caught by the grader too (its model is a copy in the kernel) --

_SLIPS = {
    "04_head": {
        "random_head": ("ex-vit", "        nn.init.zeros_(self.head.weight)  # Section 3.2: a zero-initialised D × K layer\n        nn.init.zeros_(self.head.bias)\n", "", "vit", "not initialised to zeros"),
        "randn_positions": ("ex-vit", "nn.init.trunc_normal_(self.pos_embedding, std=0.02)", "self.pos_embedding.data.normal_()", "vit", r"trunc_normal_"),
    },
    "05_training": {"no_train_mode": ("ex-train_step", "    model.train()\n", "", "train_step", r"call model\.train\(\) first")},
    "06_inside_the_vit": {"grad_on": ("ex-attention_maps", "    with torch.no_grad():\n", "    if True:\n", "attention_maps", "computed with autograd on")},
}


@pytest.mark.parametrize("week", sorted(_SLIPS))
def test_the_grader_catches_what_the_checks_newly_catch(tmp_path, week):
    import re

    import nbformat

    folder = tmp_path / "submissions"
    folder.mkdir()
    for student, (cell_id, old, new, _, _) in _SLIPS[week].items():
        nb = nbformat.read(ROOT / "solutions" / f"{week}.ipynb", as_version=4)
        cell = next(c for c in nb.cells if c.id == cell_id)
        assert old in cell.source, (week, student)
        cell.source = cell.source.replace(old, new)
        nbformat.write(nb, folder / f"{student}.ipynb")
    results = grade.grade_class(week, folder, tmp_path / "out", timeout=120, jobs=2, progress=False)
    for student, (_, _, _, exercise, hint) in _SLIPS[week].items():
        (verdict,) = [r for r in results if r.student == student and r.exercise == exercise]
        assert verdict.status == "failed" and re.search(hint, verdict.message), (student, verdict.status, verdict.message)
