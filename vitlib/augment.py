"""Augmentation that works on whole batches, on whatever device the batch is on.

A ViT trained from scratch on a small data set needs augmentation (Dosovitskiy et
al. 2020, Section 3.1: it lacks the translation equivariance of a CNN and must learn
it from data; Touvron et al. 2021, DeiT, Table 8: random erasing, mixup and cutmix
carry ViTs trained on ImageNet-1k alone). Applied one image at a time in a
DataLoader, augmentation costs more than the small model it feeds: on a 2-core CPU
half of a Fashion-MNIST epoch went into per-image transforms. Here every step is one
tensor operation over the batch, so it runs at the speed of the model, on the GPU
when there is one.

:class:`BatchTransform` turns uint8 images into normalised float images, with
optional random crops (zero padding, then a crop: a shift of up to ``padding``
pixels), horizontal flips and random erasing. It accepts one image (C, H, W) or a
batch (B, C, H, W), so it can also be an :class:`~vitlib.data.ImageDataset`'s
per-image ``transform``. :func:`mix` applies mixup or cutmix to a batch and its labels.

Every random draw takes an optional ``generator``: the training engine passes one
seeded by ``(seed, epoch)``, which keeps resumed runs exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["BatchTransform", "mix"]


def _rand(shape: Sequence[int], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) numbers on ``device``, drawn with ``generator`` wherever that lives."""
    if generator is None or generator.device.type == device.type:
        return torch.rand(tuple(shape), device=device, generator=generator)
    return torch.rand(tuple(shape), device=generator.device, generator=generator).to(device)


class BatchTransform:
    """uint8 images (B, C, H, W) or (C, H, W) → float32, augmented, normalised.

    In order:

    1. scale to [0, 1];
    2. ``rotate > 0`` or ``scale > 0``: turn each image about its centre by an angle
       drawn uniformly from ±``rotate`` degrees and zoom it by a factor drawn from
       1 ± ``scale`` (bilinear, black where the turned image leaves the frame): the
       small affine distortions of handwriting (Simard et al. 2003);
    3. ``padding > 0``: pad with zeros (black) by ``padding`` pixels on every side and
       crop a random H × W window: a random shift of up to ``padding`` pixels;
    4. ``flip``: mirror left-right with probability 1/2;
    5. normalise with ``mean`` and ``std`` (one value per channel);
    6. ``erasing > 0``: with that probability, set a random rectangle (2–33% of the
       image, aspect ratio 0.3–3.3) to 0, the mean colour after normalising
       (Zhong et al. 2020, random erasing, as in DeiT).

    Without augmentation (the defaults) it is the evaluation transform.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        padding: int = 0,
        flip: bool = False,
        erasing: float = 0.0,
        rotate: float = 0.0,
        scale: float = 0.0,
    ) -> None:
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != len(std) or not mean:
            raise ValueError(f"BatchTransform: mean and std need one value per channel, got {mean} and {std}")
        if min(std) <= 0:
            raise ValueError(f"BatchTransform: std must be positive, got {std}")
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
            raise ValueError(f"BatchTransform: padding must be an integer >= 0, got {padding!r}")
        if not 0.0 <= erasing <= 1.0:
            raise ValueError(f"BatchTransform: erasing is a probability in [0, 1], got {erasing!r}")
        if not 0.0 <= rotate <= 180.0:
            raise ValueError(f"BatchTransform: rotate is an angle in degrees in [0, 180], got {rotate!r}")
        if not 0.0 <= scale < 1.0:
            raise ValueError(f"BatchTransform: scale is a fraction in [0, 1), got {scale!r}")
        self.mean, self.std = mean, std
        self.padding, self.flip, self.erasing = padding, bool(flip), float(erasing)
        self.rotate, self.scale = float(rotate), float(scale)

    @property
    def augments(self) -> bool:
        """Whether this transform draws random numbers at all."""
        return self.padding > 0 or self.flip or self.erasing > 0 or self.rotate > 0 or self.scale > 0

    def __repr__(self) -> str:
        return (f"BatchTransform(mean={self.mean}, std={self.std}, padding={self.padding}, "
                f"flip={self.flip}, erasing={self.erasing}, rotate={self.rotate}, scale={self.scale})")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        single = images.ndim == 3
        x = images.unsqueeze(0) if single else images  # (B, C, H, W)
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise ValueError(f"BatchTransform: expected images of shape (B, {len(self.mean)}, H, W) "
                             f"or ({len(self.mean)}, H, W), got {tuple(images.shape)}")
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()  # (B, C, H, W) in [0, 1]
        if self.rotate or self.scale:
            x = self._turn(x, generator)
        if self.padding:
            x = self._shift(x, generator)
        if self.flip:
            flip = _rand((x.shape[0], 1, 1, 1), x.device, generator) < 0.5  # (B, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)  # (1, C, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)  # (1, C, 1, 1)
        x = (x - mean) / std
        if self.erasing:
            x = self._erase(x, generator)
        return x[0] if single else x

    def _turn(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Rotate by ±``rotate`` degrees and zoom by 1 ± ``scale``, each image its own draw."""
        B = x.shape[0]
        u = _rand((2, B), x.device, generator)  # (2, B): angle, zoom
        angle = torch.deg2rad((2 * u[0] - 1) * self.rotate)  # (B,) radians
        zoom = 1 + (2 * u[1] - 1) * self.scale  # (B,) > 1 enlarges the digit
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # (B,): the output → input map
        zero = torch.zeros_like(cos)  # (B,)
        theta = torch.stack([torch.stack([cos, -sin, zero], -1),
                             torch.stack([sin, cos, zero], -1)], 1)  # (B, 2, 3)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                                               align_corners=False)  # (B, C, H, W)

    def _shift(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Zero-pad by ``padding`` and crop a random window: each image moves by its own offset."""
        B, _, H, W = x.shape
        p = self.padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p)
        top = (_rand((B,), x.device, generator) * (2 * p + 1)).long()  # (B,) in 0..2p
        left = (_rand((B,), x.device, generator) * (2 * p + 1)).long()  # (B,)
        rows = top[:, None] + torch.arange(H, device=x.device)  # (B, H)
        cols = left[:, None] + torch.arange(W, device=x.device)  # (B, W)
        batch = torch.arange(B, device=x.device)[:, None, None]  # (B, 1, 1)
        # advanced indices around a slice: the indexed dimensions come first
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)

    def _erase(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random erasing: one rectangle per chosen image set to 0."""
        B, _, H, W = x.shape
        u = _rand((5, B), x.device, generator)  # (5, B): apply?, area, ratio, top, left
        area = (0.02 + (0.33 - 0.02) * u[1]) * H * W  # (B,)
        ratio = torch.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * u[2])  # (B,) height / width, log-uniform
        h = torch.sqrt(area * ratio).round().clamp(1, H)  # (B,)
        w = torch.sqrt(area / ratio).round().clamp(1, W)  # (B,)
        top = (u[3] * (H - h + 1)).floor()  # (B,)
        left = (u[4] * (W - w + 1)).floor()  # (B,)
        ys = torch.arange(H, device=x.device)[None, :]  # (1, H)
        xs = torch.arange(W, device=x.device)[None, :]  # (1, W)
        inside_y = (ys >= top[:, None]) & (ys < (top + h)[:, None])  # (B, H)
        inside_x = (xs >= left[:, None]) & (xs < (left + w)[:, None])  # (B, W)
        erase = inside_y[:, :, None] & inside_x[:, None, :] & (u[0] < self.erasing)[:, None, None]  # (B, H, W)
        return x.masked_fill(erase[:, None], 0.0)  # (B, C, H, W)


def mix(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019) of a batch with itself reversed.

    ``mixup`` and ``cutmix`` are the α of the Beta(α, α) distribution of the mixing
    weight λ; 0 switches one off. With both on, each batch uses one of the two, with
    probability 1/2. Returns the mixed images (B, C, H, W) and soft targets
    (B, num_classes) that sum to 1: λ on the image's own label and 1 − λ on its
    partner's (for cutmix, λ is the area actually kept). ``generator`` is a CPU
    generator: the few scalars drawn here never wait for the device.
    """
    B, _, H, W = images.shape
    targets = torch.nn.functional.one_hot(labels, num_classes).to(images.dtype)  # (B, K)
    if mixup <= 0 and cutmix <= 0:
        return images, targets
    # Scalars only (which method, λ, the box centre), drawn on the CPU: no device sync.
    u = torch.rand(4, generator=generator).tolist()  # which, seed of λ, box centre y, x
    use_cutmix = cutmix > 0 and (mixup <= 0 or u[0] < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(np.random.default_rng(int(u[1] * 2**31)).beta(alpha, alpha))  # λ ~ Beta(α, α)
    partner = images.flip(0)  # (B, C, H, W): image i mixes with image B-1-i
    if use_cutmix:
        cut_h, cut_w = int(H * (1 - lam) ** 0.5), int(W * (1 - lam) ** 0.5)
        cy, cx = int(u[2] * H), int(u[3] * W)
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        mixed = images.clone()
        mixed[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        mixed = lam * images + (1 - lam) * partner
    return mixed, lam * targets + (1 - lam) * targets.flip(0)

