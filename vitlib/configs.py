"""Named ViT configurations: the paper's Table 1, DeiT's small ones, and the course's.

Table 1 of Dosovitskiy et al. 2020 (Layers / Hidden size D / MLP size / Heads):
    ViT-Base   12 /  768 / 3072 / 12     86M
    ViT-Large  24 / 1024 / 4096 / 16    307M
    ViT-Huge   32 / 1280 / 5120 / 16    632M
"ViT-L/16 means the Large variant with 16×16 input patch size." DeiT (Touvron et al.
2021, Table 1) adds Ti (192 / 3 heads) and S (384 / 6 heads). The course trains on
28×28 (MNIST, Fashion-MNIST) and 32×32 (CIFAR-10) images with 4×4 patches: large
patches on small images starve the model of tokens (49 or 64 here instead of 4).
"""

from __future__ import annotations

import difflib
from dataclasses import fields, replace

from vitlib.model import ViT, ViTConfig

__all__ = ["CONFIGS", "create_vit", "get_config"]

_BASE = dict(hidden_dim=768, mlp_dim=3072, num_layers=12, num_heads=12)
_LARGE = dict(hidden_dim=1024, mlp_dim=4096, num_layers=24, num_heads=16)
_HUGE = dict(hidden_dim=1280, mlp_dim=5120, num_layers=32, num_heads=16)
_COURSE = dict(patch_size=4, num_classes=10, hidden_dim=128, mlp_dim=256, num_layers=6, num_heads=4)

CONFIGS: dict[str, ViTConfig] = {
    "vit_b_16": ViTConfig(patch_size=16, **_BASE),
    "vit_b_32": ViTConfig(patch_size=32, **_BASE),
    "vit_l_16": ViTConfig(patch_size=16, **_LARGE),
    "vit_l_32": ViTConfig(patch_size=32, **_LARGE),
    "vit_h_14": ViTConfig(patch_size=14, **_HUGE),
    "vit_ti_16": ViTConfig(patch_size=16, hidden_dim=192, mlp_dim=768, num_layers=12, num_heads=3),
    "vit_s_16": ViTConfig(patch_size=16, hidden_dim=384, mlp_dim=1536, num_layers=12, num_heads=6),
    "vit_course_28": ViTConfig(image_size=28, in_channels=1, **_COURSE),  # MNIST, Fashion-MNIST
    "vit_course_32": ViTConfig(image_size=32, in_channels=3, **_COURSE),  # CIFAR-10
}


def get_config(name: str, **overrides) -> ViTConfig:
    """The configuration called `name`, with fields replaced by `overrides`."""
    if name not in CONFIGS:
        close = difflib.get_close_matches(name, CONFIGS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown ViT configuration {name!r}.{hint} Known: {', '.join(CONFIGS)}")
    known = {f.name for f in fields(ViTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown ViTConfig field(s) {', '.join(unknown)}; fields are: {', '.join(sorted(known))}")
    return replace(CONFIGS[name], **overrides)  # re-runs the validation in ViTConfig.__post_init__


def create_vit(name: str, **overrides) -> ViT:
    """Build the ViT called `name` (see `CONFIGS`), e.g. `create_vit("vit_b_16", num_classes=10)`."""
    return ViT(get_config(name, **overrides))
