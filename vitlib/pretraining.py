"""The self-supervised pre-training loop shared by the masked autoencoder (week 09) and I-JEPA (week 12).

Both pre-train on unlabelled uint8 images held in memory, with AdamW (beta2 = 0.95, as MAE's
Table 8 and I-JEPA's Appendix C), a linear warm-up and a cosine decay to lr / 100 (`train.lr_at`,
set on every step), one random order of the images per epoch from a seeded generator, and the
same generator for the masks. What differs is given as functions: the loss of a batch, and
what happens after each step (I-JEPA's EMA update) and each epoch (its collapse watch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

__all__ = ["pretrain"]


def pretrain(parameters: Iterable[torch.nn.Parameter], images: torch.Tensor, transform,
             loss_of: Callable[[torch.Tensor, torch.Generator], torch.Tensor], *, epochs: int, batch_size: int,
             lr: float, weight_decay: float, warmup_epochs: float, seed: int, desc: str,
             after_step: Callable[[int, int], None] | None = None, after_epoch: Callable[[int], None] | None = None,
             progress: bool = True) -> list[float]:
    """Minimise ``loss_of(batch, generator)`` over ``images`` (N, C, H, W) uint8; the mean loss of each epoch.

    ``transform`` turns a uint8 batch into floats. ``after_step(step, total_steps)`` is called after
    each optimiser step (step counts from 0), ``after_epoch(epoch)`` after each epoch (from 1).
    """
    from tqdm.auto import tqdm

    from vitlib.train import lr_at

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    total = epochs * math.ceil(len(images) / batch_size)
    warmup = round(warmup_epochs * math.ceil(len(images) / batch_size))
    losses: list[float] = []
    step = 0
    for _ in tqdm(range(epochs), desc=desc, disable=not progress):
        order = torch.randperm(len(images), generator=generator)  # (N,)
        epoch_loss = 0.0
        for start in range(0, len(images), batch_size):
            batch = transform(images[order[start:start + batch_size]])  # (B, C, H, W) float
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, lr, lr / 100)
            loss = loss_of(batch, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(step, total)
            step += 1
            epoch_loss += loss.item() * len(batch)
        losses.append(epoch_loss / len(images))
        if after_epoch is not None:
            after_epoch(len(losses))
    return losses
