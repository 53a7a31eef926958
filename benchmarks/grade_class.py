"""Benchmark: grade a synthetic class of N submissions of one week, timed (not a test).

    python benchmarks/grade_class.py --students 100 --week 01_patching --jobs 2

The class mixes complete notebooks, untouched stubs and notebooks with one exercise
broken (its cell replaced by the stub), in a fixed proportion, so the grader does the
work a real class gives it. Prints the wall time and the grade counts; the figure goes
to BENCHMARKS.md with the device, the date and this command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def make_class(week: str, students: int, folder: Path) -> None:
    solution = nbformat.read(ROOT / "solutions" / f"{week}.ipynb", as_version=4)
    stub = nbformat.read(ROOT / "weeks" / f"{week}.ipynb", as_version=4)
    stub_cells = {c.id: c for c in stub.cells}
    exercises = [c.id for c in solution.cells if c.id.startswith("ex-")]
    for i in range(students):
        nb = nbformat.from_dict(solution)
        kind = i % 4  # 0, 1: complete; 2: all stubs; 3: one exercise left as a stub
        if kind == 2:
            nb = nbformat.from_dict(stub)
        elif kind == 3:
            broken = exercises[(i // 4) % len(exercises)]
            nb.cells = [stub_cells[c.id] if c.id == broken else c for c in nb.cells]
        nbformat.write(nb, folder / f"student{i:03d}.ipynb")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=100)
    parser.add_argument("--week", default="01_patching")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        submissions, out = Path(tmp) / "submissions", Path(tmp) / "grades"
        submissions.mkdir()
        make_class(args.week, args.students, submissions)
        start = time.perf_counter()
        command = [sys.executable, "-m", "vitlib.grade", args.week, str(submissions), "--out", str(out), "--jobs", str(args.jobs), "--no-progress"]
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        statuses = Counter(line.split(",")[5] for line in (out / "grades.csv").read_text().splitlines()[1:])
    print(f"graded {args.students} submissions of {args.week} with --jobs {args.jobs} in {seconds:.1f} s "
          f"({seconds / args.students:.2f} s per submission); statuses: {dict(statuses)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
