"""Checks at the boundary: a clear message instead of a traceback from inside torch.

Each message names what was expected and what came, and how to fix the common case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vitlib.model import ViTConfig

__all__ = ["check_images"]


def check_images(x: object, config: "ViTConfig") -> None:
    """Raise TypeError/ValueError unless `x` is a float tensor (B, C, H, W) that `config` accepts."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of images (B, C, H, W), got {type(x).__name__}")
    size, c = config.image_size, config.in_channels
    if x.dim() != 4:
        hint = " (a single image? add the batch axis with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(
            f"expected a 4-D tensor of images (B, C, H, W) = (B, {c}, {size}, {size}), "
            f"got {x.dim()}-D with shape {tuple(x.shape)}{hint}"
        )
    if not torch.is_floating_point(x):
        raise TypeError(
            f"expected a floating-point image tensor, got dtype {x.dtype} "
            "(uint8 pixels? convert with x.float() / 255 and normalise as in training)"
        )
    if x.shape[1] != c:
        hint = ""
        if x.shape[-1] == c and x.shape[1] != c:
            hint = " (channels last? use x.permute(0, 3, 1, 2))"
        elif c == 3 and x.shape[1] == 1:
            hint = " (grayscale image? repeat it: x.expand(-1, 3, -1, -1))"
        raise ValueError(
            f"expected {c} channel(s), images of shape (B, {c}, {size}, {size}); "
            f"got {x.shape[1]} channel(s), shape {tuple(x.shape)}{hint}"
        )
    h, w = x.shape[-2:]
    p = config.patch_size
    if h % p or w % p:
        raise ValueError(
            f"image size {h}×{w} is not divisible by the patch size {p}: "
            f"the image cannot be cut into whole {p}×{p} patches (expected {size}×{size})"
        )
    if (h, w) != (size, size):
        raise ValueError(
            f"expected images of {size}×{size} pixels (the position embeddings are learned for "
            f"{(size // p) ** 2} patches), got {h}×{w}; resize the images, or build the model with image_size={h}"
            if h == w
            else f"expected square images of {size}×{size} pixels, got {h}×{w}"
        )
