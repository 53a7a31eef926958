"""One source of truth: student notebooks (weeks/) are generated from the solutions (solutions/).

    python -m vitlib.notebooks generate           # write weeks/*.ipynb from solutions/*.ipynb (`make notebooks`)
    python -m vitlib.notebooks generate --check   # exit 1 if weeks/ is out of date (the test suite runs this)
    python -m vitlib.notebooks refresh solutions/01_patching.ipynb   # re-run a solution, keep only compared outputs
    python -m vitlib.notebooks strip < in.ipynb > out.ipynb          # the git filter of weeks/ (`make git-setup`)
    python -m vitlib.notebooks git-diff PATH OLD HEX MODE NEW HEX MODE  # git's diff driver: nbdime, on what git stores

Authoring rules (checked by `lint`):
- The solution part of an exercise sits between `### BEGIN SOLUTION` and `### END SOLUTION`
  lines; it becomes `# YOUR CODE HERE` and `raise NotImplementedError(...)` at the same
  indentation (as nbgrader does).
- The cell holding it is tagged `exercise`; the next code cell is its check, tagged `check`,
  with `# NBVAL_CHECK_OUTPUT` on a line of its own (a trailing marker is silently ignored
  by nbval) and the expected output stored (run `refresh`).
- Cell ids are stable (nbformat 4.5); exercise cells have ids `ex-NAME`, checks `check-NAME`,
  so grading finds a student's cells by id, not position.
- The last code cell, id `report-card`, is `checks.report_card(...)` with the week's exercises:
  it says which pass, and raises while one does not.

Only the outputs nbval compares are kept in the solutions, with their execution counts
(nbval never compares a cell whose count is null); everything else is stripped.
`strip_outputs` is that rule; `refresh` applies it to solutions, and the git clean filter
`strip` applies it to the student notebooks a student commits (nbstripout cannot: it keeps
either every cell's execution count or none). The generated weeks/ carry no output at all.

This module imports nothing heavier than nbformat: the git filter runs it for every notebook
git looks at.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat import NotebookNode

__all__ = [
    "BEGIN",
    "END",
    "stub_source",
    "is_checked",
    "student_notebook",
    "clean_metadata",
    "write_text_atomic",
    "strip_outputs",
    "strip_text",
    "lint",
    "generate",
    "refresh",
    "main",
]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB_MESSAGE = "write this exercise, then run the check cell below"
_MARKER = "NBVAL_CHECK_OUTPUT"
_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

ROOT = Path(__file__).resolve().parents[1]


def _marker_lines(source: str) -> tuple[bool, bool]:
    """(a marker on its own line, a marker trailing code on some line)."""
    own = trailing = False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and stripped.lstrip("#").strip() == _MARKER:
            own = True
        elif _MARKER in stripped:
            trailing = True
    return own, trailing


def is_checked(cell: NotebookNode) -> bool:
    """Whether nbval --nbval-lax compares this cell's output."""
    return cell.cell_type == "code" and (
        _marker_lines(cell.source)[0] or "nbval-check-output" in cell.metadata.get("tags", [])
    )


def stub_source(source: str) -> str:
    """Replace every BEGIN/END SOLUTION block by a stub at the same indentation."""
    out: list[str] = []
    inside = False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"nested {BEGIN!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f'{indent}raise NotImplementedError("{STUB_MESSAGE}")')
        elif stripped == END:
            if not inside:
                raise ValueError(f"{END!r} without {BEGIN!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without {END!r}")
    return "\n".join(out)


def student_notebook(solution: NotebookNode) -> NotebookNode:
    """The student's version: solutions stubbed, and no output at all.

    A solution's stored outputs are what the solution printed (a check's ✓ line, "your ... matches"):
    under a stub they would claim passes that did not happen, so a fresh week shows only what the
    student runs."""
    nb = nbformat.from_dict(solution)  # a deep copy
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if BEGIN in cell.source:
            cell.source = stub_source(cell.source)
        cell.outputs, cell.execution_count = [], None
    return nb


KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# What JupyterLab writes into a notebook when its kernel starts (ipykernel's kernel_info, with the Python of
# environment.yml and pyproject.toml): stored as it is, so that opening a week changes nothing git sees.
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": "3.11.7",
}


def clean_metadata(nb: NotebookNode) -> NotebookNode:
    """Drop what a run leaves in the notebook's metadata: widget state, the kernel an editor picked (every
    course notebook names the same one, `KERNELSPEC`); `language_info` is what JupyterLab writes on opening."""
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = dict(LANGUAGE_INFO)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def strip_outputs(nb: NotebookNode) -> NotebookNode:
    """Keep the outputs (and execution counts) of the cells nbval compares; clear every other cell's."""
    clean_metadata(nb)
    for cell in nb.cells:
        if cell.cell_type == "code" and not is_checked(cell):
            cell.outputs, cell.execution_count = [], None
    return nb


def strip_text(text: str) -> str:
    """A notebook file's text, stripped (`strip_outputs`), as `generate` writes it.

    Anything that is not a readable notebook (a file with merge-conflict markers, a
    half-written file) comes back unchanged: a filter must never lose what it was given.
    """
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception:  # noqa: BLE001 - nbformat raises many kinds; none may lose the file
        return text
    return nbformat.writes(strip_outputs(nb)) + "\n"


def git_diff(args: list[str]) -> int:
    """git's external diff driver for notebooks: nbdime's, shown on what git stores.

    git hands an external driver the working-tree file as it is, not as the clean filter
    would store it, so a notebook that was only run would show every output it made. For a
    path whose `filter` attribute is ``vitlib-strip``, both sides are stripped first
    (`strip_text`), so `git diff` shows what a commit would change; other notebooks are
    compared as they are. ``args``: git's seven (path old-file old-hex old-mode new-file new-hex new-mode).
    """
    import subprocess

    path, old, new = args[0], args[1], args[4]
    attribute = subprocess.run(["git", "check-attr", "filter", "--", path], capture_output=True, text=True).stdout
    driver = str(Path(sys.executable).with_name("git-nbdiffdriver"))
    if not attribute.strip().endswith(": vitlib-strip"):
        return subprocess.call([driver, "diff", *args])
    with tempfile.TemporaryDirectory(prefix="vitlib-diff-") as folder:
        files = []
        for side, name in ((old, "a"), (new, "b")):
            if side == "/dev/null":
                files.append(side)
                continue
            target = Path(folder) / name / Path(path).name
            target.parent.mkdir()
            target.write_text(strip_text(Path(side).read_text(encoding="utf-8")), encoding="utf-8")
            files.append(str(target))
        return subprocess.call([driver, "diff", path, files[0], *args[2:4], files[1], *args[5:7]])


def _tags(cell: NotebookNode) -> list[str]:
    return list(cell.metadata.get("tags", []))


def lint(nb: NotebookNode, name: str = "notebook") -> list[str]:
    """Authoring mistakes in a solution notebook (an empty list when there are none)."""
    problems: list[str] = []
    if "widgets" in nb.metadata:
        problems.append(f"{name}: the notebook's metadata holds widget state (run `python -m vitlib.notebooks refresh`)")
    ids: set[str] = set()
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(nb.cells):
        cid = cell.get("id")
        where = f"{name}, cell {i} (id {cid})"
        if not cid or not _ID.match(cid):
            problems.append(f"{where}: missing or invalid cell id")
        elif cid in ids:
            problems.append(f"{where}: duplicate cell id")
        ids.add(cid or "")
        if cell.cell_type != "code":
            continue
        own, trailing = _marker_lines(cell.source)
        if trailing:
            problems.append(f"{where}: {_MARKER} must stand on a line of its own (nbval ignores a trailing marker)")
        try:
            stub_source(cell.source)
        except ValueError as error:
            problems.append(f"{where}: {error}")
        tags = _tags(cell)
        if (BEGIN in cell.source) != ("exercise" in tags):
            problems.append(f"{where}: a cell with a solution block must be tagged 'exercise', and only such a cell")
        if "exercise" in tags:
            if not (cid or "").startswith("ex-"):
                problems.append(f"{where}: an exercise cell's id must start with 'ex-'")
            after = code[code.index(cell) + 1] if code.index(cell) + 1 < len(code) else None
            if after is None or "check" not in _tags(after):
                problems.append(f"{where}: the code cell after an exercise must be its check (tagged 'check')")
            elif after.get("id") != "check-" + (cid or "")[3:]:
                problems.append(f"{where}: its check cell must have id 'check-{(cid or '')[3:]}'")
        if "check" in tags and not own:
            problems.append(f"{where}: a check cell needs '# {_MARKER}' on a line of its own")
        if is_checked(cell):
            if cell.execution_count is None:
                problems.append(f"{where}: compared cell has no execution count (run `python -m vitlib.notebooks refresh`)")
            if not cell.outputs:
                problems.append(f"{where}: compared cell has no stored output (run `python -m vitlib.notebooks refresh`)")
        if cell is code[-1] and (cid != "report-card" or "checks.report_card(" not in cell.source):
            problems.append(f"{where}: the last code cell must be the report card (id 'report-card', checks.report_card(...))")
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                problems.append(f"{where}: a stored output is an error")
            if output.get("name") == "stderr":
                problems.append(f"{where}: a stored output is on stderr (nbval fails on unexpected stderr)")
    return problems


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate(
    solutions: Path = ROOT / "solutions",
    weeks: Path = ROOT / "weeks",
    check: bool = False,
    names: list[str] | None = None,
) -> list[str]:
    """Write weeks/X.ipynb for every solutions/X.ipynb (or those in `names`); with `check`, only report.

    Returns the names of the notebooks that were (or, with `check`, would be) written.
    Raises ValueError if a solution breaks the authoring rules.
    """
    stale: list[str] = []
    sources = sorted(solutions.glob("*.ipynb"))
    if names:
        wanted = {Path(n).stem for n in names}
        unknown = wanted - {p.stem for p in sources}
        if unknown:
            raise ValueError(f"no solution notebook named {', '.join(sorted(unknown))} in {solutions}")
        sources = [p for p in sources if p.stem in wanted]
    problems = [p for path in sources for p in lint(nbformat.read(path, as_version=4), path.name)]
    if problems:
        raise ValueError("solutions break the authoring rules:\n  " + "\n  ".join(problems))
    for path in sources:
        text = nbformat.writes(student_notebook(nbformat.read(path, as_version=4))) + "\n"
        target = weeks / path.name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(path.name)
            if not check:
                write_text_atomic(target, text)
    if not names:
        orphans = sorted({p.name for p in weeks.glob("*.ipynb")} - {p.name for p in sources})
        stale += [f"{name} (no solution)" for name in orphans]
    return stale


def refresh(path: Path, timeout: int = 1200) -> None:
    """Run a solution notebook top to bottom; keep outputs (and counts) of compared cells only."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    write_text_atomic(path, nbformat.writes(strip_outputs(nb)) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitlib.notebooks", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write weeks/ from solutions/")
    gen.add_argument("names", nargs="*", help="only these notebooks (e.g. 01_patching); default: all")
    gen.add_argument("--check", action="store_true", help="only report stale notebooks; exit 1 if any")
    ref = sub.add_parser("refresh", help="re-run solution notebooks and keep only compared outputs")
    ref.add_argument("paths", nargs="+", type=Path)
    sub.add_parser("strip", help="stdin -> stdout: keep only the outputs nbval compares (a git clean filter)")
    diff = sub.add_parser("git-diff", help="git's diff driver: nbdime on the stripped notebooks (`make git-setup`)")
    diff.add_argument("git_args", nargs=7, help="path old-file old-hex old-mode new-file new-hex new-mode")
    args = parser.parse_args(argv)
    if args.command == "git-diff":
        return git_diff(args.git_args)
    if args.command == "strip":
        text = sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape")
        sys.stdout.buffer.write(strip_text(text).encode("utf-8", errors="surrogateescape"))
        return 0
    if args.command == "refresh":
        for path in args.paths:
            print(f"running {path} ...", flush=True)
            refresh(path)
        return 0
    try:
        stale = generate(check=args.check, names=args.names)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if stale:
            print("weeks/ is out of date with solutions/: " + ", ".join(stale) + "\nrun `make notebooks`", file=sys.stderr)
            return 1
        print("weeks/ is up to date")
        return 0
    print("wrote " + (", ".join(stale) if stale else "nothing (up to date)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
