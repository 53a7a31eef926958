"""Checkpoints: save a trained ViT safely, load it back with clear errors.

A vitlib checkpoint is one ``torch.save``-d dict::

    {
        "format": "vitlib-checkpoint",   # so we can tell it from any other .pt file
        "version": 1,
        "model_config": {...},           # dataclasses.asdict(model.config)
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() or None,
        "epoch": 3, "step": 1410,        # epochs and optimizer steps completed
        "history": {...},                # lists of plain floats/ints (see vitlib.train)
        "train_config": {...} or None,   # dataclasses.asdict(TrainConfig)
        "extra": {...} or None,          # anything else (dataset name, ...)
    }

Two rules make checkpoints trustworthy:

1. **Atomic writes.** We write to a temporary file in the same folder, flush
   it to disk, then ``os.replace`` it onto the final name. A crash (or Ctrl-C)
   while saving leaves the previous checkpoint untouched, never half a file.
2. **Safe loading.** Everything in the dict is a tensor, dict, list, tuple,
   str, int, float, bool or None, so it loads with
   ``torch.load(path, weights_only=True)``, which never runs pickled code.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitlib.model import ViT, ViTConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "config_differences",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "vitlib-checkpoint"
CHECKPOINT_VERSION = 1

_TRAIN_HINT = (
    "train one with `python -m vitlib.train --model vit_course_28 "
    "--dataset fashion-mnist-small --epochs 5 --out DIR` (it writes DIR/last.pt)"
)


class CheckpointError(ValueError):
    """A file is not a usable vitlib checkpoint, or does not fit the model at hand."""


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int,
    step: int,
    history: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``model`` (and ``optimizer``) to ``path``, atomically.

    ``model`` must have a ``config`` dataclass attribute (as :class:`vitlib.model.ViT`
    does) so that :func:`load_model` can rebuild it. The parent folder is created
    if needed. Returns the path written.
    """
    path = Path(path)
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError(
            f"save_checkpoint needs a model with a dataclass `config` attribute "
            f"(like vitlib.model.ViT); got {type(model).__name__}"
        )
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": dataclasses.asdict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "history": history,
        "train_config": train_config,
        "extra": extra,
    }

    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lives in the same folder, so os.replace is a rename on
    # one file system: atomic on POSIX and Windows.
    tmp = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with tmp:
            torch.save(checkpoint, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, path)
    except BaseException:  # also KeyboardInterrupt: never leave a stray temp file
        Path(tmp.name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not possible on every OS)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint dict written by :func:`save_checkpoint` (always ``weights_only=True``).

    ``path`` may also be a run folder holding ``last.pt``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError (a ValueError): the file is not a vitlib checkpoint.
    """
    path = Path(path)
    if path.is_dir() and (path / "last.pt").is_file():
        path = path / "last.pt"
    if not path.is_file():
        what = "is a folder without last.pt" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"no checkpoint at {path} (it {what}); {_TRAIN_HINT}")

    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # random bytes, a truncated file, pickled code objects, ...
        message = str(e).strip()
        if "Weights only load failed" in message:
            reason = "it holds objects other than tensors and plain values, which weights_only=True refuses"
        else:
            first_line = message.splitlines()[0] if message else ""
            reason = f"torch.load could not read it: {type(e).__name__}: {first_line}"
        raise CheckpointError(f"{path} is not a vitlib checkpoint ({reason})") from e

    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a vitlib checkpoint: expected a dict with "
            f"format={CHECKPOINT_FORMAT!r}, found {_describe(obj)}"
        )
    version = obj.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} is a vitlib checkpoint of version {version!r}, but this vitlib "
            f"reads version {CHECKPOINT_VERSION} at most; update vitlib"
        )
    missing = [key for key in ("model_config", "model") if key not in obj]
    if missing:
        raise CheckpointError(f"{path} is a damaged vitlib checkpoint: it lacks {missing}")
    return obj


def _describe(obj: object) -> str:
    """A short description of what torch.load returned, for error messages."""
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, dict):
        keys = list(obj)
        shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
        text = f"a dict with keys [{shown}]"
        if keys and all(isinstance(v, torch.Tensor) for v in obj.values()):
            text += (
                " (it looks like a bare state_dict: load it with "
                "model.load_state_dict(torch.load(path, weights_only=True)))"
            )
        elif "format" in obj:
            text += f" and format={obj['format']!r}"
        return text
    return f"an object of type {type(obj).__name__}"


def config_differences(checkpoint_config: dict[str, Any], model_config: dict[str, Any]) -> list[str]:
    """The fields where two model configs (as dicts) differ, as ``"field: checkpoint=X, model=Y"``."""
    missing = "<missing>"
    return [
        f"{key}: checkpoint={checkpoint_config.get(key, missing)}, "
        f"model={model_config.get(key, missing)}"
        for key in dict.fromkeys([*checkpoint_config, *model_config])
        if checkpoint_config.get(key, missing) != model_config.get(key, missing)
    ]


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> ViT:
    """Rebuild the ViT stored in a checkpoint, load its weights, return it in eval mode."""
    checkpoint = load_checkpoint(path, map_location=map_location)
    try:
        config = ViTConfig(**checkpoint["model_config"])
    except TypeError as e:  # a field this version of ViTConfig does not know
        raise CheckpointError(
            f"{path} has a model_config this vitlib cannot build ({e}); "
            f"it was probably written by another vitlib version"
        ) from e
    model = ViT(config)
    model.load_state_dict(checkpoint["model"])
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a checkpoint's weights into an existing ``model`` (returned, mode unchanged).

    Raises CheckpointError (a ValueError) if the checkpoint was trained with a
    different model configuration, naming each differing field.
    """
    checkpoint = load_checkpoint(path)
    model_config = dataclasses.asdict(model.config)
    differences = config_differences(checkpoint["model_config"], model_config)
    if differences:
        raise CheckpointError(
            f"{path} holds weights for a different model configuration "
            f"({'; '.join(differences)}); use vitlib.checkpoint.load_model(path) "
            f"to rebuild the model it was trained with"
        )
    model.load_state_dict(checkpoint["model"])
    return model
