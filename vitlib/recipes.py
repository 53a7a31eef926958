"""Named training recipes: a model, a data set, a schedule, and the test accuracy each one reaches.

The course's week 05 trains with the budget of the machine it runs on: `budget()` is
"gpu" where CUDA is available, else "cpu", and the environment variable VITLIB_BUDGET
overrides it ("smoke" runs a few steps, to test that a notebook runs at all). Each
recipe's `goal` is the accuracy its notebook asserts; the measured figures, with
device, date and command, are in BENCHMARKS.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vitlib.train import TrainConfig

__all__ = ["Recipe", "RECIPES", "BUDGETS", "budget", "get_recipe"]

BUDGETS = ("smoke", "cpu", "gpu")

# A small, fast ViT for 28×28 images on a CPU: 7×7 patches (16 tokens), D = 64, 4 layers, 139k parameters.
_CPU_VIT = dict(patch_size=7, hidden_dim=64, num_layers=4, num_heads=4, mlp_dim=128)


@dataclass(frozen=True)
class Recipe:
    """Everything needed to reproduce one training run."""

    name: str
    description: str
    dataset: str
    model: str
    train: TrainConfig
    model_overrides: dict = field(default_factory=dict)
    augment: str = "none"
    goal: float = 0.0  # the test accuracy this recipe reaches (asserted where it is used)


RECIPES: dict[str, Recipe] = {
    "course-smoke": Recipe(
        name="course-smoke",
        description="a few steps on the bundled subset: checks that a notebook runs, not what it learns",
        dataset="fashion-mnist-small",
        model="vit_course_28",
        model_overrides=dict(_CPU_VIT, num_layers=1),
        train=TrainConfig(epochs=1, batch_size=256, lr=2e-3, warmup_epochs=0.3, label_smoothing=0.0),
        goal=0.0,
    ),
    "course-cpu": Recipe(
        name="course-cpu",
        description="week 05 on a laptop CPU: Fashion-MNIST, 5 epochs, about 3 minutes on 2 cores",
        dataset="fashion-mnist",
        model="vit_course_28",
        model_overrides=_CPU_VIT,
        train=TrainConfig(epochs=5, batch_size=128, lr=2e-3, warmup_epochs=0.3, label_smoothing=0.0),
        goal=0.85,
    ),
    "course-cpu-small": Recipe(
        name="course-cpu-small",
        description="week 05 offline with only the bundled 8,000-image subset",
        dataset="fashion-mnist-small",
        model="vit_course_28",
        model_overrides=_CPU_VIT,
        train=TrainConfig(epochs=15, batch_size=128, lr=2e-3, warmup_epochs=0.3, label_smoothing=0.0),
        goal=0.82,
    ),
    "course-gpu": Recipe(
        name="course-gpu",
        description="week 05 on one GPU: 4×4 patches, D = 128, 6 layers, 40 epochs with augmentation",
        dataset="fashion-mnist",
        model="vit_course_28",
        train=TrainConfig(epochs=40, batch_size=256, lr=1e-3, warmup_epochs=2.0, label_smoothing=0.1),
        augment="basic",
        goal=0.92,
    ),
}


def budget() -> str:
    """"gpu" where CUDA is available, else "cpu"; VITLIB_BUDGET (smoke, cpu, gpu) overrides."""
    import torch

    chosen = os.environ.get("VITLIB_BUDGET", "").strip().lower()
    if chosen:
        if chosen not in BUDGETS:
            raise ValueError(f"VITLIB_BUDGET={chosen!r} is not a budget; use one of: {', '.join(BUDGETS)}")
        return chosen
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]
