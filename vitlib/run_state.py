"""The state of a training run that a checkpoint saves and a resume restores.

After every epoch :func:`save_run` writes ``last.pt`` (atomically, :mod:`vitlib.checkpoint`):
the weights, the optimizer's moments, the history, the epoch and the step count.
:func:`restore_run` puts them back, after checking that the model has the checkpoint's
configuration. Since an epoch's randomness depends only on ``(seed, epoch)``, a resumed
run ends with exactly the weights of an uninterrupted one (bitwise, on the CPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from vitlib.checkpoint import CheckpointError, config_differences, load_checkpoint, save_checkpoint
from vitlib.history import HISTORY_KEYS, new_history
from vitlib.train_config import TrainConfig

__all__ = ["RESUMABLE_CHANGES", "RunState", "restore_run", "save_run"]

# Settings that may change between a run and its resumption without notice.
RESUMABLE_CHANGES = {"epochs", "device", "num_workers", "eval_batch_size", "progress"}


@dataclass
class RunState:
    """Where a run stands: the last finished epoch (0: none), optimizer steps, seconds, history."""

    epoch: int = 0
    step: int = 0
    seconds: float = 0.0
    history: dict[str, Any] = field(default_factory=new_history)


def restore_run(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
                say: Callable[[str], None] = print) -> RunState:
    """Load ``path`` (a ``last.pt``) into ``model`` and ``optimizer``; a fresh state if there is none.

    Raises CheckpointError if the checkpoint holds another model configuration. A change
    of training settings (other than :data:`RESUMABLE_CHANGES`) is allowed, and said.
    """
    if not path.is_file():
        say(f"no checkpoint at {path}; starting a fresh run")
        return RunState()
    checkpoint = load_checkpoint(path)
    differences = config_differences(checkpoint["model_config"], dataclasses.asdict(model.config))
    if differences:
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with a different model "
            f"configuration ({'; '.join(differences)}); use another out_dir, or build the model "
            f"with the checkpoint's configuration (vitlib.checkpoint.load_model)"
        )
    model.load_state_dict(checkpoint["model"])
    if checkpoint["optimizer"] is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    history = new_history()
    history.update({key: list(checkpoint["history"].get(key, [])) for key in HISTORY_KEYS})
    state = RunState(checkpoint["epoch"], checkpoint["step"], history["seconds"][-1] if history["seconds"] else 0.0,
                     history)
    say(f"resuming from {path} after epoch {state.epoch} (step {state.step})")
    changed = [
        f"{key}: checkpoint={value}, now={getattr(config, key)}"
        for key, value in (checkpoint.get("train_config") or {}).items()
        if key not in RESUMABLE_CHANGES and hasattr(config, key) and getattr(config, key) != value
    ]
    if changed:
        say(f"note: training settings differ from the checkpoint's: {'; '.join(changed)}")
    return state


def save_run(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: RunState,
             config: TrainConfig, extra: dict[str, Any] | None) -> None:
    """Write ``state`` with the weights and the optimizer to ``path``, atomically."""
    save_checkpoint(
        path, model, optimizer=optimizer, epoch=state.epoch, step=state.step,
        history={key: state.history[key] for key in (*HISTORY_KEYS, "grad_norm_groups")},
        train_config=dataclasses.asdict(config), extra=extra,
    )
