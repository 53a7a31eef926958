"""How to train: the settings of :func:`vitlib.train.train`, in one dataclass.

A module of its own so that :mod:`vitlib.recipes` can name settings without
importing the training engine (which, in turn, reads the recipes for its
``--recipe`` option).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """How to train (the model's own shape lives in :class:`vitlib.model.ViTConfig`).

    Defaults follow the ViT paper's recipe (Appendix B.1), scaled down for
    small images: AdamW, ``warmup_epochs`` of linear warm-up, cosine decay to
    ``min_lr``, gradient clipping at global norm ``grad_clip`` (0 = off).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    amp: bool = True  # bf16 autocast, used only on cuda
    eval_batch_size: int = 512
    progress: bool = True
    mixup: float = 0.0  # Beta(α, α) of mixup; 0 = off (vitlib.augment.mix)
    cutmix: float = 0.0  # Beta(α, α) of cutmix; 0 = off; with mixup, one of the two per batch
    time_limit: float = 0.0  # seconds; 0 = none. The schedule then follows the clock (see train)
    compile: bool = False  # torch.compile the model for training steps

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            check(is_int(value) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        for name in ("seed", "num_workers"):
            value = getattr(self, name)
            check(is_int(value) and value >= 0, f"{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "weight_decay", "warmup_epochs", "min_lr", "label_smoothing", "grad_clip",
                     "mixup", "cutmix", "time_limit"):
            value = getattr(self, name)
            check(is_number(value) and value >= 0, f"{name} must be a number >= 0, got {value!r}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        check(self.min_lr <= self.lr, f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        check(self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        check(isinstance(self.device, str) and bool(self.device), f"device must be a string such as 'auto', 'cpu' or 'cuda', got {self.device!r}")
        for name in ("amp", "progress", "compile"):
            check(isinstance(getattr(self, name), bool), f"{name} must be True or False, got {getattr(self, name)!r}")
