"""The text of a hidden test file that must never reach a student: its test names, strings, and lines of 16+ characters.

Written here independently of `vitlib.judge.secrets_of`, so that the grader's own filter is tested, not reused.
"""

from __future__ import annotations

import ast
from pathlib import Path


def hidden_text(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            found.append(node.name)
            found += [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            found += [line.strip() for line in ast.get_source_segment(source, node).splitlines() if len(line.strip()) >= 16]
    return found
