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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckFailed",
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

_PASSED: set[str] = set()
_SEED_OFFSET = 0  # 0 in the notebooks; the grader's judge draws other inputs from its grading seed


class CheckFailed(AssertionError):
    """A check found a mistake. The message says what was expected, what came, and a likely cause."""


def rel_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| / max(1e-8, |x| + |y|), elementwise (CS231n): about 1e-7 for float32 code that is right."""
    x, y = x.detach().double(), y.detach().double()
    return ((x - y).abs() / (x.abs() + y.abs()).clamp_min(1e-8)).max().item()


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten()
        head = ", ".join(f"{v:.4g}" for v in flat[:4].tolist())
        more = ", ..." if flat.numel() > 4 else ""
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}: [{head}{more}]"
    return repr(value)


def fail(what: str, expected: Any, got: Any, hint: str) -> None:
    """Raise CheckFailed with the three parts every failure names."""
    exp = expected if isinstance(expected, str) else _short(expected)
    gt = got if isinstance(got, str) else _short(got)
    raise CheckFailed(f"✗ {what}\n  expected: {exp}\n  got:      {gt}\n  hint:     {hint}")


def passed(name: str, detail: str) -> None:
    """Record that `name` passed and print the one deterministic line nbval compares."""
    _PASSED.add(name)
    print(f"✓ {name}: {detail}")


def has_passed(name: str) -> bool:
    return name in _PASSED


def reset() -> None:
    """Forget which checks passed (tests use it)."""
    _PASSED.clear()


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
                with contextlib.redirect_stdout(io.StringIO()):
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
                    with contextlib.redirect_stdout(io.StringIO()):
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


def call_student(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the student's code. Not written yet: NotImplementedError with what to do. Crashed: CheckFailed."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotImplementedError(
            f"{name} is not written yet: replace `raise NotImplementedError` in the exercise cell above "
            "with your code, run that cell, then run this check again"
        ) from None
    except CheckFailed:
        raise
    except Exception as error:  # the student's traceback stays attached as the cause
        raise CheckFailed(
            f"✗ {name} raised {type(error).__name__}: {error}\n"
            "  hint:     read the traceback above this message; the last lines in your cell show where"
        ) from error


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
) -> float:
    """`got` must equal `expected` to a relative error `tol`; known `mistakes` give their own hint."""
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
        fail(f"{what}: wrong values", expected, f"{_short(got)} (relative error {error:.1e}, allowed {tol:.0e})", known or hint)
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
