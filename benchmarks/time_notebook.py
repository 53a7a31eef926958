"""Run a notebook top to bottom and print how long each code cell took (a benchmark, not a test).

    .venv/bin/python benchmarks/time_notebook.py solutions/06_inside_the_vit.ipynb

The notebook runs in its own folder (as nbval runs it), so it finds and writes its runs/ there.
Cells that raised are marked with the exception's name.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def _seconds(cell) -> float | None:
    timing = cell.metadata.get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = datetime.datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args()
    nb = nbformat.read(args.notebook, as_version=4)
    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3", allow_errors=True, record_timing=True,
                            resources={"metadata": {"path": str(args.notebook.resolve().parent)}})
    start = time.perf_counter()
    client.execute()
    total = time.perf_counter() - start
    for cell in nb.cells:
        if cell.cell_type == "code":
            seconds = _seconds(cell)
            errors = [o.ename for o in cell.outputs if o.output_type == "error"]
            print(f"{seconds if seconds is not None else float('nan'):8.1f} s  {cell.get('id')}"
                  + (f"  raised {', '.join(errors)}" if errors else ""))
    print(f"{total:8.1f} s  in all (kernel start included)")


if __name__ == "__main__":
    main()
