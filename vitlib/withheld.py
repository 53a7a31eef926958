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
    "04_head": {  # the head is inline in ViT.forward, the count is ViT.num_parameters: ViT stays out until both are graded
        "classification_head": ["vitlib.model:ViT"],
        "vit": ["vitlib.model:ViT"],
        "count_parameters": ["vitlib.model:ViT", "vitlib.checks.model:parameter_count_parts"],
        "convert_torchvision_state_dict": ["vitlib.interop:from_torchvision", "vitlib.interop:_convert", "vitlib.interop:to_torchvision_state_dict"],
    },
    "05_training": {
        "lr_schedule": ["vitlib.train:lr_at"],
        "train_step": ["vitlib.checks.training:reference_train_step"],
        "evaluate_accuracy": ["vitlib.train:evaluate", "vitlib.train:_evaluation_sums"],
    },
    "06_inside_the_vit": {
        "attention_maps": ["vitlib.viz:attention_maps"],
        "attention_rollout": ["vitlib.viz:attention_rollout"],
        "position_similarity": ["vitlib.viz:position_similarity"],
        "mean_attention_distance": ["vitlib.viz:mean_attention_distance"],
    },
    "07_transfer": {
        "open_set_labels": ["vitlib.transfer:open_set_labels"],
        "max_softmax_probability": ["vitlib.transfer:max_softmax_probability"],
        "auroc": ["vitlib.transfer:auroc", "vitlib.transfer:roc_curve"],
        "prepare_linear_probe": ["vitlib.transfer:prepare_linear_probe", "vitlib.transfer:_new_head"],
    },
    "08_deployment": {
        "validate_upload": ["vitlib.serve:validate_upload"],
        "pad_to_square": ["vitlib.serve:pad_to_square"],
        "top_k_predictions": ["vitlib.serve:top_k_predictions"],
    },
    "09_masked_autoencoder": {
        "random_masking": ["vitlib.mae:random_masking"],
        "patch_targets": ["vitlib.mae:patch_targets"],
        "mae_loss": ["vitlib.mae:mae_loss"],
    },
    "10_distillation": {
        "prepend_tokens": ["vitlib.distill:prepend_tokens"],
        "hard_distillation_loss": ["vitlib.distill:hard_distillation_loss"],
        "soft_distillation_loss": ["vitlib.distill:soft_distillation_loss"],
        "averaged_prediction": ["vitlib.distill:averaged_prediction"],
    },
    "11_synthetic_data": {
        "render_disc": ["vitlib.synthetic:render_disc"],
        "to_shape_frame": ["vitlib.synthetic:to_shape_frame"],
        "synthetic_sample": ["vitlib.synthetic:synthetic_sample"],
    },
    "12_jepa": {
        "multi_block_mask": ["vitlib.jepa:multi_block_mask"],
        "ema_update": ["vitlib.jepa:ema_update"],
        "jepa_loss": ["vitlib.jepa:jepa_loss"],
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
                if name not in by_module.setdefault(module, []):
                    by_module[module].append(name)
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
    """module -> the source that puts back what `exercise` withheld and no later exercise of the week still does."""
    exercises = list(WITHHELD.get(week, {}))
    later = exercises[exercises.index(exercise) + 1 :] if exercise in exercises else []
    still = {(m, n) for m, names in references(week, later).items() for n in names} if later else set()
    sources = {}
    for module, names in references(week, [exercise]).items():
        names = [n for n in dict.fromkeys(names) if (module, n) not in still]
        if names:
            sources[module] = "\n\n".join(reference_source(module, n) for n in names)
    return sources


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
