"""Checks that teach: compare a student's code with vitlib's reference, and say what is wrong.

Every check of the course is built from the helpers here, so every failure reads the same:

    ✗ attention weights: wrong values
      expected: rows that sum to 1, e.g. [0.25, 0.31, 0.44]
      got:      rows that sum to [3.2, 0.8, 1.0]
      hint:     softmax over the wrong axis? Use dim=-1 (over the keys).

On success a check prints one short deterministic line (nbval compares it):

    ✓ patchify: matches vitlib on 3 seeded inputs

Values are compared with the relative error of CS231n,
rel_error = max |x - y| / max(1e-8, |x| + |y|). Where the student's result equals a
known mistake (softmax over the wrong axis, a missing √d_k, ...), the hint names it.

Fallback: `mine_or_reference(name, mine, reference)` returns the student's version if its
check has passed, else vitlib's, so a student stuck on one exercise can go on.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from vitlib.checks.feedback import (
    _FAILED,
    _PASSED,
    CheckFailed,
    ExercisesNotPassed,
    NotWrittenYet,
    exercise,
    report_card,
    reporting,
    student_lines,
    whose,
)

__all__ = [
    "CheckFailed",
    "NotWrittenYet",
    "ExercisesNotPassed",
    "exercise",
    "report_card",
    "reporting",
    "whose",
    "rel_error",
    "fail",
    "passed",
    "has_passed",
    "reset",
    "mine_or_reference",
    "from_notebook",
    "call_student",
    "expect_tensor",
    "expect_shape",
    "expect_close",
    "diagnose",
    "load_reference_weights",
    "seeded",
]

_SEED_OFFSET = 0  # 0 in the notebooks; the grader's judge draws other inputs from its grading seed


def rel_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| / max(1e-8, |x| + |y|), elementwise (CS231n): about 1e-7 for float32 code that is right."""
    x, y = x.detach().double(), y.detach().double()
    return ((x - y).abs() / (x.abs() + y.abs()).clamp_min(1e-8)).max().item()


def _short(value: Any, at: tuple[int, ...] | None = None) -> str:
    """A value as a student would describe it: a tensor's shape, dtype and first values (from `at`), else its type and repr."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten()
        start = 0 if at is None or value.dim() == 0 else int(torch.tensor(at) @ torch.tensor(value.contiguous().stride()))
        head = ", ".join(f"{v:.4g}" for v in flat[start : start + 4].tolist())
        where = f" from [{', '.join(map(str, at))}]" if start else ""
        more = ", ..." if flat.numel() > start + 4 else ""
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}{where}: [{'..., ' if start else ''}{head}{more}]"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        kind = "floats" if any(isinstance(v, float) for v in value) else "ints"
        head = ", ".join(f"{v:.4g}" for v in value[:4])
        return f"a {type(value).__name__} of {len(value)} {kind}: [{head}{', ...' if len(value) > 4 else ''}]"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def fail(what: str, expected: Any, got: Any, hint: str, *, differs: str | None = None, at: tuple[int, ...] | None = None) -> None:
    """Raise CheckFailed with the three parts every failure names (and, for values, where they differ)."""
    exp = expected if isinstance(expected, str) else _short(expected, at)
    gt = got if isinstance(got, str) else _short(got, at)
    where = f"\n  differs:  {differs}" if differs else ""
    raise CheckFailed(f"✗ {what}\n  expected: {exp}\n  got:      {gt}{where}\n  hint:     {hint}")


def where_they_differ(got: torch.Tensor, expected: torch.Tensor, tol: float, index: str = "index") -> tuple[str, tuple[int, ...]]:
    """'3 of 48 values differ; the first at index [0, 2]: 0.5 where 0.25 was expected', and that index."""
    x, y = got.detach().double(), expected.detach().double()
    bad = ((x - y).abs() / (x.abs() + y.abs()).clamp_min(1e-8) > tol) | (x.isnan() != y.isnan())
    if not bad.any():
        return "no value differs by more than the tolerance", (0,) * x.dim()
    first = tuple(int(i) for i in bad.nonzero()[0]) if x.dim() else ()
    shown = str(first[0]) if len(first) == 1 else f"[{', '.join(map(str, first))}]"
    n = int(bad.sum())
    count = "the value differs" if bad.numel() == 1 else f"{n} of {bad.numel()} values {'differ' if n > 1 else 'differs'}"
    return f"{count}; the first at {index} {shown}: {x[first].item():.4g} where {y[first].item():.4g} was expected", first


def passed(name: str, detail: str) -> None:
    """Record that `name` passed and print the one deterministic line nbval compares."""
    _PASSED.add(name)
    print(f"✓ {name}: {detail}")


def has_passed(name: str) -> bool:
    return name in _PASSED


def reset() -> None:
    """Forget which checks passed and failed (tests and the judge use it)."""
    _PASSED.clear()
    _FAILED.clear()


def mine_or_reference(name: str, mine: Any, reference: Any) -> Any:
    """The student's `mine` if the check `name` passed, else vitlib's `reference` (with a note)."""
    if name in _PASSED:
        return mine
    print(f"↪ using vitlib's {name}: yours has not passed its check yet (you can come back to it)")
    return reference


def from_notebook(
    notebook: str | Path,
    name: str,
    reference: Any,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """The student's `name` from an earlier week's notebook, or vitlib's `reference` if it is not ready.

    Notebooks share no kernel, so this runs the cells tagged `setup`, `exercise` and
    `check` of `notebook` (a path, or a week such as "03_encoder" looked up next to the
    running notebook) in a fresh namespace, quietly and in order, so that the student's
    later exercises use their earlier ones where those pass (`mine_or_reference`). Then it
    takes `name` and runs `check` on it. A stub, a failing check, or a missing notebook
    gives the reference, with a note.
    """
    path = Path(notebook)
    if path.suffix != ".ipynb":
        path = path.with_suffix(".ipynb")
    reason = None
    mine = None
    if not path.is_file():
        reason = f"{path} not found"
    else:
        try:
            cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        except (OSError, ValueError, KeyError) as error:
            cells, reason = [], f"{path} is not a readable notebook ({type(error).__name__})"
        namespace: dict[str, Any] = {"__name__": f"notebook_{path.stem}"}
        for cell in cells:
            tags = cell.get("metadata", {}).get("tags", [])
            if reason or cell.get("cell_type") != "code" or not {"setup", "exercise", "check"} & set(tags):
                continue
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            try:
                with contextlib.redirect_stdout(io.StringIO()), reporting(False):
                    exec(compile(source, f"{path.name}:{cell.get('id')}", "exec"), namespace)
            except (NotImplementedError, CheckFailed):
                continue  # a stub, or a check that fails: its exercise falls back to the reference
            except Exception as error:
                if "check" in tags:
                    continue
                reason = f"cell {cell.get('id')} of {path.name} raised {type(error).__name__}: {error}"
        if reason is None:
            mine = namespace.get(name)
            if mine is None:
                reason = f"{name} is not defined in {path.name}"
            elif check is not None:
                try:
                    with contextlib.redirect_stdout(io.StringIO()), reporting(False):
                        check(mine)
                except NotImplementedError:
                    reason = f"your {name} in {path.name} is not written yet"
                except CheckFailed:
                    reason = f"your {name} in {path.name} does not pass its check yet"
    if reason is None:
        print(f"using your {name} from {path.name}")
        return mine
    print(f"↪ using vitlib's {name}: {reason}")
    return reference


def call_student(
    name: str, fn: Callable[..., Any], *args: Any, crash_hints: Mapping[str, str] | None = None, **kwargs: Any
) -> Any:
    """Call the student's code. Not written yet: NotWrittenYet. Crashed: CheckFailed, with the student's error
    as its cause (a notebook shows the lines of the student's code that raised it).

    `crash_hints` maps a regular expression to a hint: the first one found in the student's lines that
    raised (or in the error's message) gives the hint, so a hint is given only where its cause is seen.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:  # shown if the call returns; a crash's message says it all
            result = fn(*args, **kwargs)
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
        return result
    except NotImplementedError:
        raise NotWrittenYet(name) from None
    except CheckFailed:
        raise
    except Exception as error:  # the student's traceback stays attached as the cause
        where = student_lines(error)
        seen = "\n".join([*where, f"{type(error).__name__}: {error}"])
        hint = next((h for pattern, h in (crash_hints or {}).items() if re.search(pattern, seen)), None)
        if hint is None:
            hint = (
                "the lines above are where your code raised it: check the shapes and types it uses there"
                if where
                else "your code raised this before it returned: call it on a small input yourself to see where"
            )
        raise CheckFailed(f"✗ {name} raised {type(error).__name__}: {_clip(str(error))}\n  hint:     {hint}") from error


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expect_tensor(what: str, got: Any) -> torch.Tensor:
    """`got` must be a tensor."""
    if not isinstance(got, torch.Tensor):
        fail(what, "a torch.Tensor", f"{type(got).__name__}", "return the tensor itself (not a list, a number or None)")
    return got


def expect_shape(what: str, got: torch.Tensor, expected: tuple[int, ...], hint: str) -> None:
    expect_tensor(what, got)
    if tuple(got.shape) != tuple(expected):
        fail(f"{what}: wrong shape", f"shape {tuple(expected)}", f"shape {tuple(got.shape)}", hint)


def diagnose(got: torch.Tensor, mistakes: Mapping[str, torch.Tensor], tol: float = 1e-4) -> str | None:
    """The hint of the first known mistake whose result equals `got`, or None."""
    for hint, wrong in mistakes.items():
        if wrong.shape == got.shape and rel_error(got, wrong) < tol:
            return hint
    return None


def expect_close(
    what: str,
    got: Any,
    expected: torch.Tensor,
    *,
    tol: float = 1e-5,
    mistakes: Mapping[str, torch.Tensor] | None = None,
    hint: str = "compare your steps with the equation in the text above",
    shape_hint: str | None = None,
    index: str = "index",
    got_as: str | None = None,
) -> float:
    """`got` must equal `expected` to a relative error `tol`; known `mistakes` give their own hint.

    A failure says where the values differ (how many, and the first `index` with both values there);
    `got_as` describes what the student returned where `got` was built from it (e.g. "100 floats")."""
    got = expect_tensor(what, got)
    if tuple(got.shape) != tuple(expected.shape):
        known = diagnose(got, mistakes or {})
        expect_shape(what, got, tuple(expected.shape), known or shape_hint or hint)
    if got.dtype != expected.dtype:
        fail(f"{what}: wrong dtype", f"dtype {expected.dtype}", f"dtype {got.dtype}", "keep the input's dtype (no .double(), no .long())")
    if not torch.isfinite(got).all():
        fail(f"{what}: not finite", "finite values", "NaN or inf in the result", "an overflow? (softmax: subtract the row maximum first)")
    error = rel_error(got, expected)
    if error > tol:
        known = diagnose(got, mistakes or {})
        differs, first = where_they_differ(got, expected, tol, index)
        if error < 0.5:  # above, the relative error saturates at 1 and says nothing
            differs += f" (relative error {error:.1e}, allowed {tol:.0e})"
        fail(f"{what}: wrong values", expected, got_as or got, known or hint, differs=differs, at=first)
    return error


def load_reference_weights(what: str, student: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Copy the reference module's weights into the student's; the parameter names must match."""
    want = reference.state_dict()
    have = student.state_dict()
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        fail(
            f"{what}: parameter names differ from vitlib's",
            f"parameters {', '.join(sorted(want))}",
            f"parameters {', '.join(sorted(have)) or '(none)'}",
            "name the layers as the exercise says"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unexpected: {', '.join(extra)}" if extra else ""),
        )
    for key, tensor in want.items():
        if have[key].shape != tensor.shape:
            fail(f"{what}: parameter {key} has the wrong shape", f"shape {tuple(tensor.shape)}", f"shape {tuple(have[key].shape)}", "check the in/out sizes of that layer")
    student.load_state_dict(want)


def seeded(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A reproducible standard-normal tensor (the same on every machine; other inputs under the grader's seed)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + _SEED_OFFSET), dtype=dtype)
