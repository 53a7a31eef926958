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

:func:`train` is week 05's loop: for each step the learning rate (:func:`lr_at`) and one
:class:`TrainingStep`; after each epoch the evaluation, the history and the checkpoint.
What surrounds it lives next door, one concern a module: :mod:`vitlib.batches` (data on
the device), :mod:`vitlib.deadline` (a schedule that ends on time),
:mod:`vitlib.processes` (one process or DDP), :mod:`vitlib.history` and
:mod:`vitlib.run_state` (what a checkpoint saves and a resume restores), and
:mod:`vitlib.train_cli` (the command line).

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

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from tqdm.notebook import tqdm as _notebook_tqdm

from vitlib.augment import mix
from vitlib.batches import device_batches
from vitlib.deadline import Deadline
from vitlib.history import HISTORY_KEYS, EpochRecord, StepResult
from vitlib.processes import OneProcess, process_group
from vitlib.run_state import RunState, restore_run, save_run
from vitlib.train_config import TrainConfig

__all__ = [
    "HISTORY_KEYS",
    "TrainConfig",
    "TrainingStep",
    "evaluate",
    "gradient_groups",
    "lr_at",
    "main",
    "make_optimizer",
    "parameter_groups",
    "select_device",
    "train",
]

# tqdm.auto picked its notebook flavour (widgets): we are running in Jupyter.
_IN_NOTEBOOK = issubclass(tqdm, _notebook_tqdm)

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
    _, batches = device_batches(data, batch_size, device, num_workers=num_workers)
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



# -----------------------------------------------------------------------------
# the pieces of the loop
# -----------------------------------------------------------------------------


def _schedule_steps(config: TrainConfig, train_size: int) -> tuple[int, int]:
    """``(total_steps, warmup_steps)`` of the schedule: ``config.epochs`` epochs of ``train_size`` images."""
    steps_per_epoch = math.ceil(train_size / config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError("train: the training data set is empty")
    return config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch)


def _epoch_batches(data: Dataset, config: TrainConfig, epoch: int, device: torch.device) -> tuple[int, Any, torch.Generator]:
    """``(number of batches, the epoch's batches on device, its mixing generator)``.

    Everything random in an epoch (shuffling, augmentation, mixing, dropout) depends only
    on ``(seed, epoch)``: that is what makes resuming exact.
    """
    seed = config.seed * 1_000_003 + epoch
    torch.manual_seed(config.seed + epoch)  # dropout, PatchDropout
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))  # (N,)
    # (augmentation draws on the device where it can: it then never waits for the CPU)
    augment_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    augment_generator = torch.Generator(device=augment_device).manual_seed(seed + 7_919)
    mix_generator = torch.Generator().manual_seed(seed + 15_485_863)
    num_batches, batches = device_batches(data, config.batch_size, device, order=order,
                                          generator=augment_generator, num_workers=config.num_workers)
    return num_batches, batches, mix_generator


class TrainingStep:
    """One optimizer step, as week 05's ``train_step``: forward, loss, backward, clip, AdamW.

    Around it: mixup/cutmix (soft targets), this process's share of the batch, bf16
    autocast on cuda, the gradient norm of each parameter group (the gradient flow).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                 processes: OneProcess, device: torch.device) -> None:
        self.model, self.optimizer, self.config, self.processes, self.device = model, optimizer, config, processes, device
        self.mixing = config.mixup > 0 or config.cutmix > 0
        self.num_classes = getattr(getattr(model, "config", None), "num_classes", None)
        if self.mixing and not self.num_classes:
            raise ValueError("mixup/cutmix need the number of classes: train a model with a .config.num_classes")
        self.groups = gradient_groups(model)
        self.max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
        step_model = processes.wrap(model)  # DDP averages the gradients over the processes in backward
        self.step_model = torch.compile(step_model) if config.compile else step_model

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, lr: float, mix_generator: torch.Generator) -> StepResult:
        """Train on one batch, images (B, C, H, W) and labels (B,), at learning rate ``lr``."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        targets = labels  # (B,)
        if self.mixing:
            images, targets = mix(images, labels, self.num_classes, mixup=config.mixup,
                                  cutmix=config.cutmix, generator=mix_generator)  # soft (B, K)
        batch_size = labels.numel()  # the global batch: every process drew the same one
        images, targets, labels = self.processes.share(images, targets, labels)  # (B/world, ...)
        with _autocast(self.device, config.amp):
            logits = self.step_model(images)  # (B, K)
        loss = self.processes.loss(logits, targets, config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = _group_norms(self.groups, self.device)  # (G,) per layer: the gradient flow
        grad_norm = torch.linalg.vector_norm(norms)  # the global norm, before clipping
        torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), self.max_norm, grad_norm)
        self.optimizer.step()
        dominant = targets.argmax(dim=-1) if self.mixing else labels  # (B,)
        correct = self.processes.correct(logits.argmax(dim=-1), dominant)
        return StepResult(loss, grad_norm, norms, correct, batch_size)


def _evaluate_shares(model: nn.Module, data: Dataset, config: TrainConfig, device: torch.device,
                     processes: OneProcess) -> tuple[dict[str, float], float]:
    """``({"loss", "accuracy"} on ``data``, the seconds it took)``, each process evaluating its share."""
    started = time.perf_counter()
    sums = _evaluation_sums(model, data, config.eval_batch_size, device, config.amp, config.num_workers,
                            processes.rank, processes.world)  # (loss, correct, count) of this share
    processes.sum_up(sums)
    result = {"loss": sums[0].item() / sums[2].item(), "accuracy": sums[1].item() / sums[2].item()}
    return result, time.perf_counter() - started


def _progress_bar(batches: Any, num_batches: int, epoch: int, config: TrainConfig, show: bool) -> tqdm:
    """The epoch's bar, with few refreshes.

    In Jupyter every refresh (and every epoch's bar) is a message to the front end, and
    about a thousand of them overflow the kernel's output queue, which drops messages
    (nbval then times out waiting for the cell's end): one refresh every 5 s in a notebook
    (a 10-minute run: ~120 plus ~10 per epoch; at 2 s, nbval once timed out), every second
    elsewhere; and once at the end of each epoch (:func:`_show_step`).
    """
    return tqdm(batches, total=num_batches, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                mininterval=5.0 if _IN_NOTEBOOK else 1.0, disable=not (config.progress and show),
                file=sys.stderr, dynamic_ncols=True)


def _show_step(bar: tqdm, record: EpochRecord, lr: float) -> None:
    """Every 10 steps, and at the epoch's last: the loss and the learning rate on the bar."""
    if not bar.disable and (len(record) % 10 == 1 or len(record) == bar.total):
        bar.set_postfix(loss=f"{record.losses[-1].item():.4f}", lr=f"{lr:.2e}", refresh=False)


def _print_epoch(history: dict[str, Any], config: TrainConfig, stopped_early: bool) -> None:
    """The epoch's line: losses, accuracies, seconds (stdout in a notebook, where stderr shows up red)."""
    tqdm.write(
        f"epoch {history['epoch'][-1]}/{config.epochs}  "
        f"train loss {history['train_loss'][-1]:.4f} acc {history['train_accuracy'][-1]:.2%}  "
        f"test loss {history['test_loss'][-1]:.4f} acc {history['test_accuracy'][-1]:.2%}  "
        f"[{history['seconds'][-1]:.1f}s]" + ("  (time limit: stopped early)" if stopped_early else ""),
        file=sys.stdout if _IN_NOTEBOOK else sys.stderr,
    )


def _already_trained(model: nn.Module, test_data: Dataset, config: TrainConfig, device: torch.device,
                     state: RunState, processes: OneProcess, checkpoint_path: Path | None) -> dict[str, Any]:
    """A resumed run whose checkpoint has every epoch: evaluate, report, train nothing."""
    result = evaluate(model, test_data, batch_size=config.eval_batch_size, device=device,
                      amp=config.amp, num_workers=config.num_workers)
    processes.say(f"checkpoint already at epoch {state.epoch} of {config.epochs}: "
                  f"test loss {result['loss']:.4f}, test accuracy {result['accuracy']:.2%}")
    return {**state.history, "checkpoint": str(checkpoint_path), "device": str(device), "stopped_early": False}


# -----------------------------------------------------------------------------
# the loop
# -----------------------------------------------------------------------------


def train(model: nn.Module, train_data: Dataset, test_data: Dataset, config: TrainConfig,
          out_dir: str | Path | None = None, resume: bool = False, *, extra: dict[str, Any] | None = None,
          ) -> dict[str, Any]:
    """Train ``model`` on ``train_data``, evaluating on ``test_data`` after every epoch.

    Datasets yield ``(float image tensor, int label)``; those of :func:`vitlib.data.load_dataset`
    are served from memory (:mod:`vitlib.batches`). If ``out_dir`` is given, ``out_dir/last.pt``
    is written (atomically) after every epoch, with ``extra``; ``resume=True`` continues from it
    (:mod:`vitlib.run_state`). ``config.time_limit`` makes the run stop itself, its cosine
    ending on time (:mod:`vitlib.deadline`); ``history["stopped_early"]`` says whether it did.
    Returns the history (:mod:`vitlib.history`) plus ``"checkpoint"`` (path or None) and
    ``"device"``. The model ends on the chosen device, in eval mode.
    """
    if resume and out_dir is None:
        raise ValueError("resume=True needs the out_dir that holds last.pt")
    processes = process_group()  # one process, or several under torchrun (vitlib.processes)
    device = processes.place(select_device(config.device))
    torch.manual_seed(config.seed)
    model.to(device)
    optimizer = make_optimizer(model, config)
    checkpoint_path = Path(out_dir) / "last.pt" if out_dir is not None else None
    state = restore_run(checkpoint_path, model, optimizer, config, processes.say) if resume else RunState()
    total_steps, warmup_steps = _schedule_steps(config, len(train_data))
    if state.epoch >= config.epochs:  # nothing left to train: just report
        return _already_trained(model, test_data, config, device, state, processes, checkpoint_path)
    history = state.history
    train_step = TrainingStep(model, optimizer, config, processes, device)  # week 05's train_step
    history["grad_norm_groups"] = list(train_step.groups)
    deadline = Deadline(config.time_limit, state.seconds, processes.agree)
    for epoch in range(state.epoch + 1, config.epochs + 1):
        num_batches, batches, mix_generator = _epoch_batches(train_data, config, epoch, device)
        model.train()
        record = EpochRecord(device, processes.world)
        deadline.epoch_starts()
        with _progress_bar(batches, num_batches, epoch, config, processes.is_main) as bar:
            for images, labels in bar:  # (B, C, H, W), (B,) on device
                position = deadline.position(state.step, total_steps)  # on the clock, if it is ahead
                if position is None:  # the next step could end past the time limit
                    break
                lr = lr_at(position, total_steps, warmup_steps, config.lr, config.min_lr)
                record.add(train_step(images, labels, lr, mix_generator), lr)
                state.step += 1
                _show_step(bar, record, lr)
            bar.refresh()  # the epoch's last state, also for an epoch shorter than the refresh interval
        if not record:  # the clock ran out before this epoch took a step
            break
        result, eval_seconds = _evaluate_shares(model, test_data, config, device, processes)
        deadline.evaluated(eval_seconds)
        record.append_to(history, epoch, result, deadline.elapsed(), processes.sum_up)
        state.epoch = epoch
        if config.progress and processes.is_main:
            _print_epoch(history, config, deadline.stopped)
        if checkpoint_path is not None and processes.is_main:
            save_run(checkpoint_path, model, optimizer, state, config, processes.note(extra))
        processes.barrier()  # nobody runs ahead of the checkpoint (a resume reads it)
        if deadline.stopped:
            break
    return {**history, "stopped_early": deadline.stopped,
            "checkpoint": str(checkpoint_path) if checkpoint_path is not None else None, "device": str(device)}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line, ``python -m vitlib.train`` (:mod:`vitlib.train_cli`)."""
    from vitlib.train_cli import main as command_line

    return command_line(argv)


if __name__ == "__main__":
    raise SystemExit(main())
