"""The processes that train together: one alone, or several under torchrun (DDP).

:func:`vitlib.train.train` talks to a *process group* and never asks how many
processes there are. With one process (:class:`OneProcess`) every method is the
identity: the loop is week 05's, and no distributed code is taken or read. Under
``torchrun`` (:class:`DistributedProcesses`) PyTorch's DistributedDataParallel averages
the gradients, and the group does the rest:

- every process draws the same global batch and trains on its :meth:`share` of it;
- the :meth:`loss` of a share is weighted so that DDP's average is the global batch's mean;
- rank 0's clock decides for everyone (:meth:`agree`), or the processes would part ways;
- the epoch's sums are added up over the processes (:meth:`sum_up`);
- only rank 0 prints and writes the checkpoint (:attr:`is_main`), and nobody runs
  ahead of it (:meth:`barrier`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistributedProcesses", "OneProcess", "process_group", "start_processes"]


class OneProcess:
    """Training in this process alone: shares, sums and agreements are the identity."""

    rank, world, is_main = 0, 1, True

    def place(self, device: torch.device) -> torch.device:
        """The device this process trains on: ``device`` itself."""
        return device

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: the model itself."""
        return model

    def share(self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's part of the batch: all of it."""
        return images, targets, labels

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """The batch's mean cross-entropy: logits (B, K), targets (B,) or soft (B, K)."""
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)

    def correct(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """How many of this share's predictions (B,) are right."""
        return (predictions == labels).sum()

    def agree(self, stop: bool, position: int) -> tuple[bool, int]:
        """The clock's decision, for everyone: this process's own."""
        return stop, position

    def sum_up(self, *tensors: torch.Tensor) -> None:
        """Add each tensor up over the processes, in place: nothing to add."""

    def barrier(self) -> None:
        """Wait for every process: there is no other."""

    def say(self, text: str) -> None:
        """Print ``text`` (only rank 0 prints)."""
        print(text)

    def note(self, extra: dict[str, Any] | None) -> dict[str, Any] | None:
        """What the checkpoint stores next to the weights: ``extra`` as given."""
        return extra


class DistributedProcesses(OneProcess):
    """Several processes under torchrun, each training on its share of every global batch."""

    def __init__(self, rank: int | None = None, world: int | None = None) -> None:
        """This process's rank among ``world`` (both from torch.distributed unless given)."""
        self.rank = dist.get_rank() if rank is None else rank
        self.world = dist.get_world_size() if world is None else world
        self.is_main = self.rank == 0
        self._weight = 1.0  # the last share's weight in the loss
        self._device = torch.device("cpu")

    def place(self, device: torch.device) -> torch.device:
        """One GPU per process (``LOCAL_RANK``); CPU processes share the CPU."""
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self._device = device
        return device

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP: gradients averaged over the processes in backward; rank 0's initial weights everywhere."""
        return DistributedDataParallel(model, device_ids=[self._device.index] if self._device.type == "cuda" else None)

    def share(self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This rank's slice of the global batch (B,) -> (B/world,).

        A share of nothing (a last batch smaller than the world) still takes part in the
        gradient averaging, with one image and a weight of 0.
        """
        batch_size = labels.numel()
        share = torch.arange(batch_size, device=labels.device).tensor_split(self.world)[self.rank]  # (B/world,)
        self._weight = self.world / batch_size if len(share) else 0.0
        share = share if len(share) else share.new_zeros(1)
        return images[share], targets[share], labels[share]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        """The share's summed loss × world / B: averaged over the processes by DDP, the global batch's mean."""
        summed = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing, reduction="sum")
        return self._weight * summed

    def correct(self, predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """How many of the share's predictions are right (none for a share of nothing)."""
        return (predictions == labels).sum() if self._weight else torch.zeros((), dtype=torch.long, device=labels.device)

    def agree(self, stop: bool, position: int) -> tuple[bool, int]:
        """Rank 0's decision, broadcast: everyone stops at the same step, at the same point of the schedule."""
        decision = torch.tensor([float(stop), float(position)], dtype=torch.float64, device=self._device)
        dist.broadcast(decision, src=0)
        return bool(decision[0].item()), int(decision[1].item())

    def sum_up(self, *tensors: torch.Tensor) -> None:
        """All-reduce each tensor (a sum), in place."""
        for tensor in tensors:
            dist.all_reduce(tensor)

    def barrier(self) -> None:
        """Nobody runs ahead of the checkpoint (a resume reads it)."""
        dist.barrier()

    def say(self, text: str) -> None:
        if self.is_main:
            print(text)

    def note(self, extra: dict[str, Any] | None) -> dict[str, Any]:
        """``extra``, and how many processes trained."""
        return {**(extra or {}), "processes": self.world}


def process_group() -> OneProcess:
    """The group this process trains in: :class:`DistributedProcesses` once torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistributedProcesses()
    return OneProcess()


def start_processes(device: torch.device) -> int:
    """Under torchrun (``WORLD_SIZE`` > 1): join the process group. Returns the number of processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # (gloo: CPU processes)
    return world
