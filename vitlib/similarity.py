"""Copying, flagged for the instructor: the similarity of each exercise cell to vitlib, the solution and the class.

copydetect (MOSS's winnowing) fingerprints each cell after it has replaced names by
placeholders and dropped comments, so renaming variables or reformatting does not hide a copy.
The stub the student started from is boilerplate: the signature and docstring everybody has
are not counted. A row's `similarity` is the share of the student's own code found in the
closest of:

- `vitlib`: the source of vitlib's answer to the exercise (`vitlib.withheld`);
- `solution`: the instructor's solution cell;
- `student:NAME`: the same exercise of another submission of the class.

A flag changes no points: the instructor reads `similarity.md` and decides. Answers with fewer
than `MIN_FINGERPRINTS` fingerprints of their own (a line or two beyond the stub, such as a
one-line `rearrange`) are too short to tell a copy from the obvious answer, and score 0.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

from vitlib import withheld
from vitlib.notebooks import stub_source

if TYPE_CHECKING:
    from vitlib.grade import Result
    from vitlib.judge import Week

__all__ = ["NOISE", "WINDOW", "MIN_FINGERPRINTS", "fingerprint", "similarity", "score", "report"]

NOISE = 25  # copydetect's noise threshold: matches shorter than this many filtered characters are ignored
WINDOW = 6  # the winnowing window: guarantee threshold 30 (copydetect's defaults)
MIN_FINGERPRINTS = 10  # fewer of the student's own: too short to score


def fingerprint(code: str, boilerplate: str = ""):
    """copydetect's fingerprint of a Python cell, without the hashes of `boilerplate`."""
    import numpy as np
    from copydetect import CodeFingerprint

    root = logging.getLogger()
    level, root.level = root.level, max(root.level, logging.ERROR)  # copydetect warns on the root logger about short cells
    try:
        base = np.array(sorted(CodeFingerprint("boilerplate.py", NOISE, WINDOW, fp=io.StringIO(boilerplate)).hashes)) if boilerplate else None
        return CodeFingerprint("cell.py", NOISE, WINDOW, boilerplate=base, fp=io.StringIO(code))
    finally:
        root.level = level


def similarity(student, other) -> float:
    """The share of `student`'s fingerprinted code that is also in `other` (0 to 1)."""
    from copydetect import compare_files

    if len(student.hashes) == 0 or len(other.hashes) == 0:
        return 0.0
    _, (share, _), _ = compare_files(student, other)
    return float(share)


def score(week: Week, sources: dict[str, dict[str, str]], graded: dict[str, list[Result]]) -> None:
    """Fill `similarity` and `similar_to` of every graded row from the students' cells."""
    for exercise in week.exercises:
        boilerplate = stub_source(exercise.source)
        names = withheld.references(week.name, [exercise.name])
        vitlib_source = "\n\n".join(withheld.reference_source(m, n) for m, ns in names.items() for n in ns)
        known = {"vitlib": fingerprint(vitlib_source, boilerplate)} if vitlib_source else {}  # first: wins a tie
        known["solution"] = fingerprint(exercise.source, boilerplate)
        prints = {s: fingerprint(code[exercise.name], boilerplate) for s, code in sources.items() if exercise.name in code}
        for student, results in graded.items():
            if student not in prints:
                continue
            mine = prints[student]
            if len(mine.hashes) < MIN_FINGERPRINTS:
                continue
            candidates = {**known, **{f"student:{s}": prints[s] for s in sorted(prints) if s != student}}
            best, to = 0.0, ""
            for name, other in candidates.items():
                value = similarity(mine, other)
                if value > best + 1e-9:
                    best, to = value, name
            for r in results:
                if r.exercise == exercise.name:
                    r.similarity, r.similar_to = round(best, 2), to


def report(week: str, results: list[Result], flag: float) -> str:
    """similarity.md: the rows at or above `flag`, the closest match named."""
    flagged = sorted((r for r in results if r.similarity >= flag), key=lambda r: (-r.similarity, r.student, r.exercise))
    lines = [f"# {week}: similarity", "",
             f"Rows whose code is at least {flag:.0%} like vitlib's answer, the solution or another submission "
             "(copydetect, MOSS's winnowing; the stub's lines are not counted). A flag changes no points: look at the code and decide.", ""]  # fmt: skip
    if not flagged:
        return "\n".join(lines + ["No row is flagged."]) + "\n"
    lines += ["| student | exercise | similarity | like | points |", "|---|---|---|---|---|"]
    lines += [f"| {r.student} | {r.exercise} | {r.similarity:.2f} | {r.similar_to} | {r.points:g} / {r.max_points:g} |" for r in flagged]
    return "\n".join(lines) + "\n"
