"""Train a Vision Transformer: one engine for notebooks and the shell.

The recipe follows Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words"
(Appendix B.1, "Training"): Adam with decoupled weight decay (AdamW), a linear
learning-rate warm-up followed by cosine decay, and gradient clipping at global
norm 1. Label smoothing is the usual extra when training ViTs from scratch on
small data sets.

From a notebook::

    from vitlib.configs import create_vit
    from vitlib.train import TrainConfig, train
    history = train(model, train_data, test_data, TrainConfig(epochs=5), out_dir="runs/demo")

From the shell (the last line on stdout is a JSON summary)::

    python -m vitlib.train --recipe fashion-mnist-cpu          # a named recipe, vitlib.recipes
    python -m vitlib.train --model vit_course_28 --dataset fashion-mnist-small \\
        --epochs 5 --out runs/demo

Reproducibility: an epoch's shuffling, augmentation and dropout depend only on
``(seed, epoch)`` and the weights at its start. Together with the checkpoint
written after every epoch (model + optimizer + history), this makes a resumed
run end with exactly the weights of an uninterrupted one (bitwise, on the CPU).

On several GPUs (or CPU processes), under ``torchrun``::

    torchrun --nproc_per_node=4 -m vitlib.train --recipe cifar10 --out runs/c10

with the same flags as one process: PyTorch's DistributedDataParallel, ``--batch-size``
is the global batch, split across the processes; every process draws the same global
batch and augmentation and trains on its share, so N processes follow the one-process
run (up to floating-point summation order, and dropout's random masks); only rank 0
prints and writes the checkpoint, and ``--resume`` works as with one process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm
from tqdm.notebook import tqdm as _notebook_tqdm

from vitlib.augment import BatchTransform, mix
from vitlib.checkpoint import CheckpointError, config_differences, load_checkpoint, save_checkpoint
from vitlib.data import ImageDataset
from vitlib.train_config import TrainConfig

__all__ = [
    "HISTORY_KEYS",
    "TrainConfig",
    "evaluate",
    "gradient_groups",
    "lr_at",
    "main",
    "make_optimizer",
    "parameter_groups",
    "select_device",
    "train",
]

# -----------------------------------------------------------------------------
# configuration
# -----------------------------------------------------------------------------


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; an explicit device must be available."""
    cuda = torch.cuda.is_available()
    mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    available = ["cpu"] + (["cuda"] if cuda else []) + (["mps"] if mps else [])
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use 'auto' or one of: {', '.join(available)}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not supported; use 'auto' or one of: {', '.join(available)}")
    if device.type not in available:
        raise ValueError(f"device {name!r} is unavailable on this machine; available: {', '.join(available)}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} is unavailable: this machine has {torch.cuda.device_count()} cuda device(s)")
    return device


# -----------------------------------------------------------------------------
# learning-rate schedule and optimizer (ViT paper, Appendix B.1)
# -----------------------------------------------------------------------------


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr`` over the first
    ``warmup_steps`` steps, then cosine decay from ``base_lr`` to ``min_lr`` at
    ``total_steps``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on weight matrices/kernels only.

    No decay on 1-D parameters (biases, LayerNorm scales) nor on the class token
    and position embeddings: shrinking those towards zero has no regularising
    meaning.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "class_token" in name or "pos_embedding" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay) over :func:`parameter_groups`; lr is set by hand each step."""
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))


# -----------------------------------------------------------------------------
# evaluation
# -----------------------------------------------------------------------------


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on cuda when ``amp``; a no-op everywhere else."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _in_memory(data: Dataset) -> tuple[torch.Tensor, torch.Tensor, BatchTransform | None] | None:
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


def _batches(
    data: Dataset,
    batch_size: int,
    device: torch.device,
    *,
    order: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
) -> tuple[int, Any]:
    """``(number of batches, iterable of (images, labels) on device)``, in ``order`` if given.

    In-memory datasets (see :func:`_in_memory`) are moved to the device once and
    transformed a whole batch at a time, drawing from ``generator`` (on ``device``);
    other datasets go through a DataLoader. ``order`` is a permutation of the indices.
    """
    served = _in_memory(data)
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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: bool = True,
    num_workers: int = 0,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy (without label smoothing) of ``model`` on ``data``.

    Puts the model in eval mode (and leaves it there). ``device`` defaults to
    the device of the model's parameters.
    """
    device = next(model.parameters()).device if device is None else torch.device(device)
    loss_sum, correct, count = _evaluation_sums(model, data, batch_size, device, amp, num_workers)
    if count.item() == 0:
        raise ValueError("evaluate: the data set is empty")
    return {"loss": loss_sum.item() / count.item(), "accuracy": correct.item() / count.item()}


@torch.no_grad()
def _evaluation_sums(model: nn.Module, data: Dataset, batch_size: int, device: torch.device, amp: bool,
                     num_workers: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """(summed loss, correct, count) over this process's share of every batch, a (3,) float64 tensor."""
    _, batches = _batches(data, batch_size, device, num_workers=num_workers)
    model.eval()
    sums = torch.zeros(3, device=device, dtype=torch.float64)
    for images, labels in batches:
        images, labels = images.tensor_split(world)[rank], labels.tensor_split(world)[rank]  # this rank's share
        if labels.numel() == 0:
            continue
        with _autocast(device, amp):
            logits = model(images)  # (B, K)
        sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
        sums[1] += (logits.argmax(dim=-1) == labels).sum()
        sums[2] += labels.numel()
    return sums


# -----------------------------------------------------------------------------
# training
# -----------------------------------------------------------------------------

HISTORY_KEYS = (
    # one entry per optimizer step ("step_group_grad_norm": one list per step, a norm per
    # entry of "grad_norm_groups", the model's parameter groups from `gradient_groups`)
    "step_loss", "step_lr", "step_grad_norm", "step_group_grad_norm",
    # one entry per epoch
    "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
)

# tqdm.auto picked its notebook flavour (widgets): we are running in Jupyter.
_IN_NOTEBOOK = issubclass(tqdm, _notebook_tqdm)

# Settings that may change between a run and its resumption without notice.
_RESUMABLE_CHANGES = {"epochs", "device", "num_workers", "eval_batch_size", "progress"}


def gradient_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's trainable parameters in the groups whose gradient norms the history records.

    For a ViT: "embedding" (E, x_class, E_pos), "layer 0" ... "layer L-1" (the encoder
    blocks), "head" (the LN of eq. 4 and the head): the gradient flow through depth.
    Any other module is grouped by its top-level children.
    """
    groups: dict[str, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        parts = name.split(".")
        if parts[:2] == ["encoder", "layers"] and len(parts) > 2:
            group = f"layer {parts[2]}"
        elif parts[0] in ("patch_embed", "class_token", "pos_embedding"):
            group = "embedding"
        elif parts[0] in ("norm", "head"):
            group = "head"
        else:
            group = parts[0]
        groups.setdefault(group, []).append(parameter)
    return groups


def _group_norms(groups: dict[str, list[nn.Parameter]], device: torch.device) -> torch.Tensor:
    """The L2 norm of each group's gradients, (G,); the global norm is the norm of this vector."""
    norms = []
    for parameters in groups.values():
        grads = [p.grad for p in parameters if p.grad is not None]
        norms.append(torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device))
    return torch.stack(norms).float()  # (G,)


def _rank_and_world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) unless torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling generator of one epoch: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def train(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train_data``, evaluating on ``test_data`` after every epoch.

    Datasets yield ``(float image tensor, int label)``. If ``out_dir`` is given,
    ``out_dir/last.pt`` is written (atomically) after every epoch, with ``extra``
    stored alongside; ``resume=True`` continues from it. Returns the history: a
    dict of lists (see ``HISTORY_KEYS``) plus ``"checkpoint"`` (path or None)
    and ``"device"``. The model ends on the chosen device, in eval mode.

    Datasets from :func:`vitlib.data.load_dataset` (with the transforms of
    :mod:`vitlib.data`) are moved to the device once and transformed a batch at a
    time; any other dataset goes through a DataLoader.

    ``config.time_limit`` (seconds) makes the run stop itself: the cosine schedule
    advances by steps or by the clock, whichever is further, so it reaches its end
    at the deadline even on a machine slower than planned; the final evaluation
    fits inside the limit. ``history["stopped_early"]`` says whether the clock,
    not the epoch count, ended the run. (Such a run is not bitwise reproducible.)
    """
    if resume and out_dir is None:
        raise ValueError("resume=True needs the out_dir that holds last.pt")
    rank, world = _rank_and_world()  # several processes under torchrun (see the module's docstring)
    main_process = rank == 0  # only rank 0 prints and writes the checkpoint
    device = select_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per process
    torch.manual_seed(config.seed)
    model.to(device)
    optimizer = make_optimizer(model, config)
    checkpoint_path = Path(out_dir) / "last.pt" if out_dir is not None else None

    history: dict[str, Any] = {key: [] for key in HISTORY_KEYS}
    start_epoch, step, seconds_before = 1, 0, 0.0
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        checkpoint = load_checkpoint(checkpoint_path)
        differences = config_differences(checkpoint["model_config"], dataclasses.asdict(model.config))
        if differences:
            raise CheckpointError(
                f"cannot resume from {checkpoint_path}: it was trained with a different model "
                f"configuration ({'; '.join(differences)}); use another out_dir, or build the model "
                f"with the checkpoint's configuration (vitlib.checkpoint.load_model)"
            )
        model.load_state_dict(checkpoint["model"])
        if checkpoint["optimizer"] is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
        history.update({key: list(checkpoint["history"].get(key, [])) for key in HISTORY_KEYS})
        start_epoch, step = checkpoint["epoch"] + 1, checkpoint["step"]
        seconds_before = history["seconds"][-1] if history["seconds"] else 0.0
        changed = [
            f"{key}: checkpoint={value}, now={getattr(config, key)}"
            for key, value in (checkpoint.get("train_config") or {}).items()
            if key not in _RESUMABLE_CHANGES and hasattr(config, key) and getattr(config, key) != value
        ]
        if main_process:
            print(f"resuming from {checkpoint_path} after epoch {checkpoint['epoch']} (step {step})")
            if changed:
                print(f"note: training settings differ from the checkpoint's: {'; '.join(changed)}")
    elif resume and main_process:
        print(f"no checkpoint at {checkpoint_path}; starting a fresh run")

    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError("train: the training data set is empty")
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)

    if start_epoch > config.epochs:  # nothing left to train: just report
        result = evaluate(model, test_data, batch_size=config.eval_batch_size, device=device,
                          amp=config.amp, num_workers=config.num_workers)
        if main_process:
            print(f"checkpoint already at epoch {start_epoch - 1} of {config.epochs}: "
                  f"test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.2%}")
        return {**history, "checkpoint": str(checkpoint_path), "device": str(device), "stopped_early": False}

    max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
    groups = gradient_groups(model)
    history["grad_norm_groups"] = list(groups)
    mixing = config.mixup > 0 or config.cutmix > 0
    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if mixing and not num_classes:
        raise ValueError("mixup/cutmix need the number of classes: train a model with a .config.num_classes")
    if world > 1:  # gradients averaged over the processes in backward; rank 0's initial weights everywhere
        step_model: nn.Module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        step_model = model
    step_model = torch.compile(step_model) if config.compile else step_model
    # With a time limit the schedule runs on the clock as well as on the step count:
    # where the machine is slower than planned, the cosine still ends at the deadline
    # (minus a reserve for the last evaluation) and training stops there.
    reserve = 0.05 * config.time_limit  # until the first evaluation shows what it costs
    stopped_early = False
    start_time = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        # Everything random in this epoch (shuffling, augmentation, mixing, dropout)
        # depends only on (seed, epoch): that is what makes resuming exact.
        torch.manual_seed(config.seed + epoch)
        order = torch.randperm(len(train_data), generator=_epoch_generator(config.seed, epoch))  # (N,)
        # (on the device where it can be: augmentation then never waits for the CPU)
        generator_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
        augment_generator = torch.Generator(device=generator_device).manual_seed(config.seed * 1_000_003 + epoch + 7_919)
        mix_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch + 15_485_863)
        num_batches, batches = _batches(train_data, config.batch_size, device, order=order,
                                        generator=augment_generator, num_workers=config.num_workers)
        model.train()
        # Per-step values stay on the device until the epoch ends (no sync per step).
        losses, grad_norms, group_norms, lrs = [], [], [], []
        correct = torch.zeros((), device=device, dtype=torch.long)
        loss_sum, count = torch.zeros((), device=device), 0
        # Few refreshes: in Jupyter every refresh (and every epoch's bar) is a message to the
        # front end, and about a thousand of them overflow the kernel's output queue, which
        # drops messages (nbval then times out waiting for the cell's end): one refresh every
        # 5 s in a notebook (a 10-minute run: ~120 plus ~10 per epoch; at 2 s, nbval once timed out), every
        # second elsewhere; and once at the end of each epoch, so that a short epoch does not stay at 0%.
        bar = tqdm(batches, total=num_batches, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                   mininterval=5.0 if _IN_NOTEBOOK else 1.0, disable=not (config.progress and main_process),
                   file=sys.stderr, dynamic_ncols=True)
        last_check = time.perf_counter()
        with bar:
            for images, labels in bar:  # (B, C, H, W), (B,) on device
                position = step
                if config.time_limit:
                    now = time.perf_counter()
                    elapsed = seconds_before + now - start_time
                    step_seconds, last_check = now - last_check, now  # one step, data included
                    # stop before a step that could end past the deadline
                    deadline = max(config.time_limit - reserve - step_seconds, 1e-9)
                    position = max(step, math.floor(total_steps * elapsed / deadline))  # the clock's step
                    stop = elapsed >= deadline
                    if world > 1:  # rank 0's clock decides for everyone, or the processes would part ways
                        decision = torch.tensor([float(stop), float(position)], dtype=torch.float64, device=device)
                        dist.broadcast(decision, src=0)
                        stop, position = bool(decision[0].item()), int(decision[1].item())
                    if stop:
                        stopped_early = True
                        break
                lr = lr_at(position, total_steps, warmup_steps, config.lr, config.min_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                targets = labels
                if mixing:
                    images, targets = mix(images, labels, num_classes, mixup=config.mixup,
                                          cutmix=config.cutmix, generator=mix_generator)  # soft (B, K)
                batch_size = labels.numel()  # the global batch: every process drew the same one
                if world > 1:  # this process's share of the global batch
                    share = torch.arange(batch_size, device=labels.device).tensor_split(world)[rank]  # (B/world,)
                    # a share of nothing (a last batch smaller than the world) still takes part in the
                    # gradient averaging, with one image and a weight of 0
                    weight = world / batch_size if len(share) else 0.0
                    share = share if len(share) else share.new_zeros(1)
                    images, targets, labels = images[share], targets[share], labels[share]
                with _autocast(device, config.amp):
                    logits = step_model(images)  # (B, K)
                if world > 1:
                    # sum × world / B: averaged over the processes by DDP, the gradient of the global batch's mean
                    loss = weight * F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing,
                                                    reduction="sum")
                else:
                    loss = F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norms = _group_norms(groups, device)  # (G,) per layer: the gradient flow
                grad_norm = torch.linalg.vector_norm(norms)  # the global norm, before clipping
                torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, grad_norm)
                optimizer.step()
                step += 1

                losses.append(loss.detach())  # with several processes: this one's part of the mean
                grad_norms.append(grad_norm.detach())
                group_norms.append(norms.detach())
                lrs.append(lr)
                loss_sum += loss.detach() * batch_size / world
                dominant = targets.argmax(dim=-1) if mixing else labels  # (B,)
                if world == 1 or weight:
                    correct += (logits.argmax(dim=-1) == dominant).sum()
                count += batch_size
                if config.progress and main_process and (len(losses) % 10 == 1 or len(losses) == num_batches):
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
            bar.refresh()  # the epoch's last state, also for an epoch shorter than the refresh interval

        if not losses:  # the clock ran out before this epoch took a step
            break
        eval_start = time.perf_counter()
        sums = _evaluation_sums(model, test_data, config.eval_batch_size, device, config.amp,
                                config.num_workers, rank, world)  # (loss, correct, count) of this share
        step_losses = torch.stack(losses).float()  # (steps,)
        if world > 1:  # add up the processes' parts
            train_sums = torch.stack([loss_sum.double(), correct.double()])
            for tensor in (sums, step_losses, train_sums):
                dist.all_reduce(tensor)
            step_losses /= world  # each process's part was its share of the sum, × world / B
            loss_sum, correct = train_sums[0], train_sums[1]
        result = {"loss": sums[0].item() / sums[2].item(), "accuracy": sums[1].item() / sums[2].item()}
        # what the last evaluation will cost, with room to spare
        reserve = min(2 * (time.perf_counter() - eval_start) + 0.01 * config.time_limit, 0.25 * config.time_limit)
        history["step_loss"] += step_losses.tolist()
        history["step_grad_norm"] += torch.stack(grad_norms).float().tolist()
        history["step_group_grad_norm"] += torch.stack(group_norms).tolist()
        history["step_lr"] += lrs
        history["epoch"].append(epoch)
        history["train_loss"].append(loss_sum.item() / count)
        history["train_accuracy"].append(correct.item() / count)
        history["test_loss"].append(result["loss"])
        history["test_accuracy"].append(result["accuracy"])
        history["seconds"].append(seconds_before + time.perf_counter() - start_time)
        if config.progress and main_process:  # (stdout in a notebook, where stderr shows up red)
            tqdm.write(
                f"epoch {epoch}/{config.epochs}  "
                f"train loss {history['train_loss'][-1]:.4f} acc {history['train_accuracy'][-1]:.2%}  "
                f"test loss {result['loss']:.4f} acc {result['accuracy']:.2%}  "
                f"[{history['seconds'][-1]:.1f}s]" + ("  (time limit: stopped early)" if stopped_early else ""),
                file=sys.stdout if _IN_NOTEBOOK else sys.stderr,
            )

        if checkpoint_path is not None and main_process:
            save_checkpoint(
                checkpoint_path, model, optimizer=optimizer, epoch=epoch, step=step,
                history={key: history[key] for key in (*HISTORY_KEYS, "grad_norm_groups")},
                train_config=dataclasses.asdict(config), extra=extra if world == 1 else {**(extra or {}), "processes": world},
            )
        if world > 1:
            dist.barrier()  # nobody runs ahead of the checkpoint (a resume reads it)
        if stopped_early:
            break

    history["stopped_early"] = stopped_early
    history["checkpoint"] = str(checkpoint_path) if checkpoint_path is not None else None
    history["device"] = str(device)
    return history


# -----------------------------------------------------------------------------
# command line
# -----------------------------------------------------------------------------


class _UsageError(Exception):
    """A mistake in the command line or its consequences: reported as one `error:` line."""


def _parse_value(text: str) -> bool | int | float | str:
    """``--set`` values: true/false, then int, then float, else the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["num_layers=2", "dropout=0.1"]`` into model-config overrides."""
    from vitlib.model import ViTConfig

    known = [field.name for field in dataclasses.fields(ViTConfig)]
    from_dataset = {"image_size", "in_channels", "num_classes"}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise _UsageError(f"--set expects KEY=VALUE, got {item!r}")
        if key in from_dataset:
            raise _UsageError(f"--set {key}=... is not allowed: {key} comes from the dataset")
        if key not in known:
            raise _UsageError(f"--set {key}: unknown model setting; known: {', '.join(k for k in known if k not in from_dataset)}")
        overrides[key] = _parse_value(value.strip())
    return overrides


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vitlib.train",
        description="Train a Vision Transformer (Dosovitskiy et al. 2020) on an image data set. "
                    "The last line on stdout is a JSON summary.",
    )
    parser.add_argument("--recipe", help="a named recipe (see vitlib.recipes): model, data set, augmentation and "
                                         "schedule in one; the options below override parts of it")
    parser.add_argument("--model", help="model name, e.g. vit_course_28 (see vitlib.configs.CONFIGS)")
    parser.add_argument("--dataset", help="mnist, fashion-mnist, cifar10 or fashion-mnist-small")
    parser.add_argument("--epochs", type=int, help="number of epochs (default 10)")
    parser.add_argument("--out", help="run folder for last.pt (default runs/MODEL-DATASET)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    parser.add_argument("--device", help="auto (default), cpu, cuda or mps")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--eval-batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine decay")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--grad-clip", type=float, help="clip gradients at this global norm (0 = off)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast on cuda")
    parser.add_argument("--mixup", type=float, help="mixup Beta(α, α); 0 = off")
    parser.add_argument("--cutmix", type=float, help="cutmix Beta(α, α); 0 = off")
    parser.add_argument("--time-limit", type=float, help="stop after this many seconds, the schedule ending on time")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model for training (--no-compile: not even if the recipe says so)")
    parser.add_argument("--augment", help="training augmentation: none, flip, basic (default), digits or strong")
    parser.add_argument("--data-root", help="where data sets are stored / downloaded")
    parser.add_argument("--subset", type=int, help="use only the first N train and N//4 test images")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model-config override, repeatable, e.g. --set num_layers=2")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")
    return parser


def _train_config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Only the options given on the command line override ``base`` (a recipe's, or the defaults)."""
    given = {
        "epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
        "lr": args.lr, "min_lr": args.min_lr, "weight_decay": args.weight_decay,
        "warmup_epochs": args.warmup_epochs, "label_smoothing": args.label_smoothing,
        "grad_clip": args.grad_clip, "seed": args.seed, "num_workers": args.num_workers,
        "device": args.device, "mixup": args.mixup, "cutmix": args.cutmix, "time_limit": args.time_limit,
    }
    kwargs: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    if args.no_amp:
        kwargs["amp"] = False
    if args.no_progress:
        kwargs["progress"] = False
    if args.compile is not None:
        kwargs["compile"] = args.compile
    return dataclasses.replace(base, **kwargs) if base is not None else TrainConfig(**kwargs)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse, build data and model, train, print a JSON summary."""
    started = time.perf_counter()
    parser = _build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: this process's rank; only rank 0 reports
    try:
        summary = _run(args)
    except (_UsageError, CheckpointError, FileNotFoundError) as error:
        # Configuration mistakes (unknown model, patch size that does not divide
        # the image, missing data set, checkpoint of another model, ...): one line, exit 2.
        if rank == 0:
            print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print("interrupted; continue with --resume (OUT/last.pt holds the last finished epoch)", file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    summary["wall_seconds"] = round(time.perf_counter() - started, 3)  # loading data and model included
    if rank == 0:
        print(json.dumps(summary))
    return 0


def _start_processes(device: torch.device) -> int:
    """Under torchrun (WORLD_SIZE > 1): join the process group; the number of processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # (gloo: CPU processes)
    return world


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from vitlib.configs import create_vit
    from vitlib.data import eval_transform, load_dataset, train_transform
    from vitlib.recipes import get_recipe

    try:  # every ValueError while setting up is a mistake on the command line
        recipe = get_recipe(args.recipe) if args.recipe else None
        model_name = args.model or (recipe.model if recipe else None)
        dataset = args.dataset or (recipe.dataset if recipe else None)
        if model_name is None or dataset is None:
            raise _UsageError("say what to train: --recipe NAME, or both --model and --dataset")
        augment = args.augment or (recipe.augment if recipe else "basic")
        config = _train_config_from_args(args, recipe.train if recipe else None)
        overrides = {**(recipe.model_overrides if recipe else {}), **_parse_sets(args.set)}
        device = select_device(config.device)  # fail early, before loading data
        if args.subset is not None and args.subset < 1:
            raise _UsageError(f"--subset must be a positive integer, got {args.subset}")

        train_set = load_dataset(dataset, split="train", root=args.data_root)
        test_set = load_dataset(dataset, split="test", root=args.data_root)
        train_set.transform = train_transform(train_set, augment)
        test_set.transform = eval_transform(test_set)

        torch.manual_seed(config.seed)  # the initial weights depend on the seed too
        model = create_vit(
            model_name, image_size=train_set.image_size, in_channels=train_set.in_channels,
            num_classes=train_set.num_classes, **overrides,
        )
    except (ValueError, TypeError) as error:
        raise _UsageError(_one_line(error).replace("TrainConfig: ", "")) from error
    processes = _start_processes(device)

    train_data: Dataset = train_set
    test_data: Dataset = test_set
    if args.subset is not None:
        train_data = Subset(train_set, range(min(args.subset, len(train_set))))
        test_data = Subset(test_set, range(min(max(1, args.subset // 4), len(test_set))))

    out_dir = Path(args.out) if args.out else Path("runs") / (args.recipe or f"{model_name}-{dataset}")
    extra = {"model_name": model_name, "dataset": dataset, "augment": augment, "subset": args.subset,
             "recipe": args.recipe}
    history = train(model, train_data, test_data, config, out_dir=out_dir, resume=args.resume, extra=extra)

    accuracy = history["test_accuracy"][-1] if history["test_accuracy"] else None
    return {
        "recipe": args.recipe,
        "model": model_name,
        "dataset": dataset,
        "augment": augment,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": history["epoch"][-1] if history["epoch"] else 0,
        "test_accuracy": accuracy,
        "goal": recipe.goal if recipe else None,
        "reached_goal": (accuracy is not None and accuracy >= recipe.goal) if recipe else None,
        "test_loss": history["test_loss"][-1] if history["test_loss"] else None,
        "train_loss": history["train_loss"][-1] if history["train_loss"] else None,
        "train_accuracy": history["train_accuracy"][-1] if history["train_accuracy"] else None,
        "seconds": history["seconds"][-1] if history["seconds"] else 0.0,
        "stopped_early": history["stopped_early"],
        "device": history["device"],
        "processes": processes,
        "checkpoint": history["checkpoint"],
        "train_size": len(train_data),
        "test_size": len(test_data),
        "model_config": dataclasses.asdict(model.config),
        "train_config": dataclasses.asdict(config),
    }


if __name__ == "__main__":
    raise SystemExit(main())
