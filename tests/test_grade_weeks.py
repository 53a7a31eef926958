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
