"""vitlib's answers that a student's kernel cannot reach while their exercise is graded.

vitlib ships the reference of every exercise, and the notebooks use it as a fallback. For
grading, the student's kernel imports a copy of vitlib (`strip_vitlib`) in which the
references of the week's exercises are replaced by stubs that raise `ReferenceWithheld`: an
alias (`vitlib.patchify`), another import path (`importlib`, `sys.modules`, `__import__`), a
subclass, `checks.mine_or_reference`, a `reload` or an `exec` of the module's own file all meet
the stub. The judge sees `ReferenceWithheld` come back and gives the exercise the status
`uses_reference` (0 points). Once an exercise is graded, its reference is put back
(`reveal_sources`, applied by `vitlib.probe`), so later exercises can build on it as the
notebook's fallback does. Only the original files on disk still hold the code: the OS
sandbox (`vitlib.sandbox`) hides them.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

__all__ = ["WITHHELD", "ReferenceWithheld", "stub", "references", "strip_vitlib", "reveal_sources", "reference_source"]

VITLIB = Path(__file__).resolve().parent

# week -> exercise (the cell id without "ex-") -> the module-level names that answer it
WITHHELD: dict[str, dict[str, list[str]]] = {
    "00_setup": {
        "channels_last": ["vitlib.checks.setup:channels_last"],
        "downsample": ["vitlib.checks.setup:downsample"],
        "to_rgb": ["vitlib.checks.setup:to_rgb"],
        "image_grid": ["vitlib.checks.setup:image_grid"],
    },
    "01_patching": {
        "patchify": ["vitlib.patching:patchify"],
        "num_patches": ["vitlib.checks.patching:num_patches"],
        "patch_embedding": ["vitlib.patching:PatchEmbedding"],
        "add_class_token_and_positions": ["vitlib.checks.patching:add_class_token_and_positions"],
    },
    "02_attention": {
        "attention_scores": ["vitlib.checks.attention:reference_attention_scores"],
        "softmax": ["vitlib.checks.attention:reference_softmax"],
        "attention": ["vitlib.attention:scaled_dot_product_attention"],
    },
    "03_encoder": {
        "gelu": [],  # vitlib has no gelu of its own: the fallback is torch's F.gelu
        "MultiHeadSelfAttention": ["vitlib.attention:MultiHeadSelfAttention"],
        "MLP": ["vitlib.encoder:MLP"],
        "EncoderBlock": ["vitlib.encoder:EncoderBlock"],
    },
}


class ReferenceWithheld(RuntimeError):
    """vitlib's own answer to the exercise being graded was called."""


def stub(qualified: str, kind: str):
    """What stands in a module for the withheld `qualified` name: a function, or a class, that refuses."""
    message = (
        f"{qualified} is vitlib's own answer to the exercise being graded, and is withheld while it is graded: "
        "your code must compute it itself"
    )

    def refuse(*args, **kwargs):
        raise ReferenceWithheld(message)

    if kind == "function":
        refuse.__name__ = refuse.__qualname__ = qualified.rpartition(".")[2]
        return refuse

    def refuse_subclass(cls, **kwargs):
        raise ReferenceWithheld(message)

    namespace = {"__new__": refuse, "__init_subclass__": classmethod(refuse_subclass), "__module__": qualified.rpartition(".")[0]}
    return type(qualified.rpartition(".")[2], (), namespace)


def references(week: str, exercises: list[str] | None = None) -> dict[str, list[str]]:
    """module -> names withheld for `week` (all its exercises, or those given)."""
    by_module: dict[str, list[str]] = {}
    for exercise, names in WITHHELD.get(week, {}).items():
        if exercises is None or exercise in exercises:
            for entry in names:
                module, _, name = entry.partition(":")
                by_module.setdefault(module, []).append(name)
    return by_module


def _module_file(root: Path, module: str) -> Path:
    parts = module.split(".")[1:]
    path = root.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _definitions(source: str) -> dict[str, ast.stmt]:
    return {node.name: node for node in ast.parse(source).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def reference_source(module: str, name: str) -> str:
    """The source of `module:name` in vitlib as shipped, decorators included."""
    source = _module_file(VITLIB, module).read_text(encoding="utf-8")
    node = _definitions(source)[name]
    lines = source.splitlines()
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return "\n".join(lines[start - 1 : node.end_lineno]) + "\n"


def reveal_sources(week: str, exercise: str) -> dict[str, str]:
    """module -> the source that puts `exercise`'s references back (sent to the kernel once it is graded)."""
    return {module: "\n\n".join(reference_source(module, n) for n in names) for module, names in references(week, [exercise]).items()}


def strip_vitlib(dest: Path, week: str) -> Path:
    """Copy vitlib into `dest`/vitlib with `week`'s references replaced by stubs; returns `dest` (for PYTHONPATH)."""
    target = dest / "vitlib"
    shutil.copytree(VITLIB, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for module, names in references(week).items():
        path = _module_file(target, module)
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        definitions = _definitions(source)
        for name in sorted(names, key=lambda n: definitions[n].lineno, reverse=True):
            node = definitions[name]
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines[start - 1 : node.end_lineno] = [
                f'{name} = __import__("vitlib.withheld", fromlist=["stub"]).stub("{module}.{name}", "{kind}")  # withheld while graded'
            ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest
