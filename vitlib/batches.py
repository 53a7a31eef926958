"""A data set served to the training loop a batch at a time, on the device.

Data sets from :func:`vitlib.data.load_dataset` (uint8 images in memory, a
:class:`~vitlib.augment.BatchTransform` or none) are moved to the device once, and each
batch is cut from them and transformed there, a whole batch at a time: no worker
processes, no per-image Python. Any other data set goes through a DataLoader.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vitlib.augment import BatchTransform
from vitlib.data import ImageDataset

__all__ = ["device_batches", "in_memory"]


def in_memory(data: Dataset) -> tuple[torch.Tensor, torch.Tensor, BatchTransform | None] | None:
    """``(images uint8 (N, C, H, W), labels (N,), transform)`` if ``data`` can be served batch by batch.

    That is an :class:`~vitlib.data.ImageDataset` (or a ``Subset`` of one) whose
    transform is None or a :class:`~vitlib.augment.BatchTransform`, what
    :func:`~vitlib.data.load_dataset` and the transforms of :mod:`vitlib.data` give.
    Anything else goes through a DataLoader, one item at a time.
    """
    base, indices = data, None
    if isinstance(data, Subset):
        base, indices = data.dataset, torch.as_tensor(list(data.indices), dtype=torch.long)
    if not isinstance(base, ImageDataset):
        return None
    transform = base.transform
    if transform is not None and not isinstance(transform, BatchTransform):
        return None
    images, labels = base.images, base.labels  # (N, C, H, W) uint8, (N,) int64
    if indices is not None:
        images, labels = images[indices], labels[indices]
    return images, labels, transform


def device_batches(
    data: Dataset,
    batch_size: int,
    device: torch.device,
    *,
    order: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
) -> tuple[int, Any]:
    """``(number of batches, iterable of (images, labels) on device)``, in ``order`` if given.

    In-memory datasets (see :func:`in_memory`) are moved to the device once and
    transformed a whole batch at a time, drawing from ``generator`` (on ``device``);
    other datasets go through a DataLoader. ``order`` is a permutation of the indices.
    """
    served = in_memory(data)
    if served is None:
        sampler = order.tolist() if order is not None else None
        # A generator of its own: a DataLoader without one draws its workers' base seed from
        # the global RNG, which would shift every random draw after it (dropout, PatchDropout)
        # and make this path train differently from the in-memory one.
        loader = DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))

        def from_loader():
            for images, labels in loader:
                yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

        return len(loader), from_loader()

    images, labels, transform = served
    images, labels = images.to(device), labels.to(device)  # the whole split, once
    count = len(labels)
    index = order.to(device) if order is not None else torch.arange(count, device=device)  # (N,)

    def from_memory():
        for start in range(0, count, batch_size):
            batch = index[start:start + batch_size]  # (B,)
            x = images[batch]  # (B, C, H, W) uint8
            x = transform(x, generator) if transform is not None else x.float() / 255  # (B, C, H, W) float32
            yield x, labels[batch]

    return math.ceil(count / batch_size), from_memory()

