"""The history of a training run: one value per optimizer step, one per epoch.

:func:`vitlib.train.train` returns it, the checkpoint stores it, week 05 plots it. A
step's values stay on the device in an :class:`EpochRecord` until the epoch ends, so
recording them never waits for the GPU; they join the history once per epoch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

__all__ = ["HISTORY_KEYS", "EpochRecord", "StepResult", "new_history"]

HISTORY_KEYS = (
    # one entry per optimizer step ("step_group_grad_norm": one list per step, a norm per
    # entry of "grad_norm_groups", the model's parameter groups from `gradient_groups`)
    "step_loss", "step_lr", "step_grad_norm", "step_group_grad_norm",
    # one entry per epoch
    "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
)


def new_history() -> dict[str, Any]:
    """An empty history: a list for every key of :data:`HISTORY_KEYS`."""
    return {key: [] for key in HISTORY_KEYS}


class StepResult(NamedTuple):
    """What one training step reports, every tensor still on the device."""

    loss: torch.Tensor  # () this process's part of the batch's mean loss
    grad_norm: torch.Tensor  # () the global gradient norm, before clipping
    group_norms: torch.Tensor  # (G,) the norm of each parameter group's gradient
    correct: torch.Tensor  # () right predictions in this process's share
    batch_size: int  # B, the global batch


class EpochRecord:
    """One epoch's steps, on the device until :meth:`append_to` adds them to the history."""

    def __init__(self, device: torch.device, world: int = 1) -> None:
        self.world = world
        self.losses: list[torch.Tensor] = []
        self.grad_norms: list[torch.Tensor] = []
        self.group_norms: list[torch.Tensor] = []
        self.lrs: list[float] = []
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.loss_sum, self.count = torch.zeros((), device=device), 0

    def __len__(self) -> int:
        """The number of steps taken."""
        return len(self.losses)

    def add(self, step: StepResult, lr: float) -> None:
        """Record one step, taken at learning rate ``lr``."""
        self.losses.append(step.loss.detach())  # with several processes: this one's part of the mean
        self.grad_norms.append(step.grad_norm.detach())
        self.group_norms.append(step.group_norms.detach())
        self.lrs.append(lr)
        self.loss_sum += step.loss.detach() * step.batch_size / self.world  # the share's summed loss
        self.correct += step.correct
        self.count += step.batch_size

    def append_to(self, history: dict[str, Any], epoch: int, test: dict[str, float], seconds: float,
                  sum_up: Callable[..., None]) -> None:
        """Add epoch ``epoch`` to ``history``: its steps, its training and ``test`` loss and accuracy, ``seconds``.

        ``sum_up`` adds tensors up over the processes (:meth:`vitlib.processes.OneProcess.sum_up`).
        """
        step_losses = torch.stack(self.losses).float()  # (steps,)
        train_sums = torch.stack([self.loss_sum.double(), self.correct.double()])  # (2,)
        sum_up(step_losses, train_sums)
        step_losses /= self.world  # each process's part was its share of the sum, × world / B
        history["step_loss"] += step_losses.tolist()
        history["step_grad_norm"] += torch.stack(self.grad_norms).float().tolist()
        history["step_group_grad_norm"] += torch.stack(self.group_norms).tolist()
        history["step_lr"] += self.lrs
        history["epoch"].append(epoch)
        history["train_loss"].append(train_sums[0].item() / self.count)
        history["train_accuracy"].append(train_sums[1].item() / self.count)
        history["test_loss"].append(test["loss"])
        history["test_accuracy"].append(test["accuracy"])
        history["seconds"].append(seconds)
