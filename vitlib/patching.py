"""Week 01: images to patches, and the patch embedding of eq. 1.

Dosovitskiy et al. 2020, Section 3.1: "we reshape the image x ∈ R^{H×W×C} into a
sequence of flattened 2D patches x_p ∈ R^{N×(P²·C)}, where (P, P) is the resolution
of each image patch, and N = HW/P² is the resulting number of patches". Each flattened
patch is then mapped to D dimensions with a trainable linear projection E (eq. 1).

A Linear layer on non-overlapping patches is the same operation as a Conv2d whose
kernel size and stride are both P (torchvision and timm implement it that way);
`conv_weight_from_linear` and `linear_weight_from_conv` convert between the two.

Flattening order of one patch: (p1 p2 c), i.e. row of the patch, column, channel.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

__all__ = [
    "patchify",
    "unpatchify",
    "PatchEmbedding",
    "linear_weight_from_conv",
    "conv_weight_from_linear",
]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Split images (B, C, H, W) into flattened patches (B, N, P²·C), N = HW/P² (Section 3.1).

    Patches are ordered row by row (raster order), as in the paper and in torchvision/timm.
    """
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, N, P²·C) back to images (B, C, H, W)."""
    return rearrange(
        patches,
        "b (h w) (p1 p2 c) -> b c (h p1) (w p2)",
        h=height // patch_size,
        w=width // patch_size,
        p1=patch_size,
        p2=patch_size,
        c=channels,
    )


class PatchEmbedding(nn.Module):
    """The linear projection E of eq. 1: x_p^i E for every patch i.

    Input (B, C, H, W) images, output (B, N, D) patch embeddings. The class token and
    the position embeddings of eq. 1 are added by `vitlib.model.ViT`.
    """

    def __init__(self, patch_size: int, in_channels: int, hidden_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.proj = nn.Linear(patch_size * patch_size * in_channels, hidden_dim)  # E: (P²·C) -> D

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(images, self.patch_size)  # (B, N, P²·C)
        return self.proj(patches)  # (B, N, D)


def linear_weight_from_conv(conv_weight: torch.Tensor) -> torch.Tensor:
    """A Conv2d patch-embedding weight (D, C, P, P) as the Linear weight (D, P²·C) of eq. 1."""
    return rearrange(conv_weight, "d c p1 p2 -> d (p1 p2 c)")


def conv_weight_from_linear(linear_weight: torch.Tensor, patch_size: int, in_channels: int) -> torch.Tensor:
    """The Linear weight (D, P²·C) of eq. 1 as a Conv2d weight (D, C, P, P)."""
    return rearrange(linear_weight, "d (p1 p2 c) -> d c p1 p2", p1=patch_size, p2=patch_size, c=in_channels)
